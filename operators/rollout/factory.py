"""The one place a rollout engine is built: from a stage's rollout settings and the models it holds.

Every stage that samples (rejection sampling, PPO, Ghost Attention and its evaluation, safety
distillation, the chat evaluation) calls `rollout_engine`; an engine for another backend (vLLM on
GPUs) would be chosen here, behind the same interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from model.convert import read_model_args
from model.tokenizer import load_tokenizer
from operators.rollout.actors import ActorRolloutEngine
from operators.rollout.config import RolloutConfig
from operators.rollout.engine import RolloutEngine


def rollout_engine(settings: RolloutConfig, policy: Path, max_seq_len: int, rewards: Mapping[str, Path] | None = None,
                   reference: Path | None = None) -> RolloutEngine:
    """An engine sampling from the policy at `policy` (a Hugging Face model/ folder with its tokenizer),
    scoring with the reward models `rewards` (label -> folder) and, given `reference`, that frozen
    policy's log-probs. Generation stops at the EOS of the policy's own tokenizer."""
    eos_id = load_tokenizer(Path(policy)).eos_id
    return ActorRolloutEngine(settings, Path(policy), dict(rewards or {}), reference, eos_id, max_seq_len)


def rollout_context(policy: Path, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """The context the engine needs: the policy's own, or more when a prompt plus its answer is longer."""
    longest = max((len(p) for p in prompts), default=1)
    return max(read_model_args(policy).max_seq_len, longest + max_new_tokens)
