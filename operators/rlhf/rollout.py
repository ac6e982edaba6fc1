"""The rollout engine: sample responses from the policy and score them with both reward models.

Rejection sampling and PPO draw from the same engine. It sits behind a small interface
(`RolloutEngine`: load the policy's weights; roll out prompts into token ids, log-probs, an EOS
flag and the two reward models' scores), so that a serving engine such as vLLM can replace the
Ray actors below on GPU clusters: it needs to accept new weights from a state dict in Ray's
object store, generate token ids for token-id prompts with the sampled tokens' log-probs, and
report whether a sequence ended with EOS. Token ids stay token ids from generation through
scoring and training: nothing is decoded and re-encoded on the way.

`ActorRolloutEngine` is a pool of Ray actors, one per GPU (or per CPU slot on the demo), each
holding the policy, both reward models and, for PPO, the frozen reference policy. Prompts are
dealt to the actors in fixed chunks and each chunk is sampled with its own seed, so a rollout is
reproducible from the seed for the same number of actors (the sharding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
import torch

from model.convert import load_model, load_reward_model
from model.generate import Generator
from operators.chat.reward_task import collate_sequences

REWARD_LABELS = ("helpfulness", "safety")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass(frozen=True)
class Rollout:
    """One response to one prompt: token ids only, as the policy wrote them."""

    prompt: list[int]
    response: list[int]  # with its EOS when it ended
    logprobs: list[float]  # of each response token, under the distribution it was sampled from
    ended: bool  # False: cut by the length limit (its reward is a penalty, not a score at a non-EOS token)
    scores: dict[str, float]  # raw reward-model scores read at the last token: helpfulness, safety
    ref_logprobs: list[float] = field(default_factory=list)  # under the reference policy (PPO)


class RolloutEngine(Protocol):
    def load_policy(self, weights: Any) -> None:
        """Take new policy weights (a state dict, or a Ray object ref to one)."""

    def rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        """`samples_per_prompt` scored responses for each prompt, in prompt order."""


class RolloutActor:
    """One rollout worker: the policy (and its generator), the reward models, maybe the reference policy."""

    def __init__(self, policy: str, rewards: Mapping[str, str], max_seq_len: int, reference: bool,
                 batch_size: int, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.policy = load_model(Path(policy), "hf", max_seq_len=max_seq_len).eval()
        self.reference = load_model(Path(policy), "hf", max_seq_len=max_seq_len).eval() if reference else None
        self.rewards = {label: load_reward_model(Path(path), max_seq_len=max_seq_len).eval()
                        for label, path in rewards.items()}
        self.generator = Generator(self.policy)
        self.batch_size = batch_size

    def load_policy(self, weights: Any) -> None:
        state = ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights
        self.policy.load_state_dict(state, strict=False)  # in place: the generator's graphs stay valid

    @torch.inference_mode()
    def rollouts(self, prompts: list[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        torch.manual_seed(seed)
        flat = [p for p in prompts for _ in range(samples_per_prompt)]
        out: list[Rollout] = []
        for first in range(0, len(flat), self.batch_size):
            batch = flat[first:first + self.batch_size]
            generated = self.generator.sample(batch, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                                              eos_id=2)
            sequences = [p + g.tokens for p, g in zip(batch, generated)]
            scores = {label: self._score(model, sequences) for label, model in self.rewards.items()}
            references = self._reference_logprobs(batch, generated) if self.reference is not None else None
            for i, (prompt, g) in enumerate(zip(batch, generated)):
                out.append(Rollout(prompt, g.tokens, g.logprobs, g.ended, {k: v[i] for k, v in scores.items()},
                                   references[i] if references else []))
        return [out[i:i + samples_per_prompt] for i in range(0, len(out), samples_per_prompt)]

    def _score(self, model: torch.nn.Module, sequences: list[list[int]]) -> list[float]:
        """Scores read at each sequence's last token."""
        batch = collate_sequences(sequences)
        return model(batch["tokens"], batch["mask"]).float().tolist()

    def _reference_logprobs(self, prompts: list[list[int]], generated) -> list[list[float]]:
        out = []
        for prompt, g in zip(prompts, generated):
            tokens = torch.tensor([prompt + g.tokens])
            logits = self.reference(tokens)[0, len(prompt) - 1: -1].float()
            out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(g.tokens)[:, None]).squeeze(-1).tolist())
        return out


def rollout_context(policy: Path, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """The context the rollout actors need: the policy's own, or more when a prompt plus its answer is longer."""
    from model.convert import read_model_args

    longest = max((len(p) for p in prompts), default=1)
    return max(read_model_args(policy).max_seq_len, longest + max_new_tokens)


class ActorRolloutEngine:
    """A pool of `RolloutActor`s; prompts are dealt in chunks of `chunk_prompts`, one seed per chunk."""

    def __init__(self, policy: Path, rewards: Mapping[str, Path], max_seq_len: int, actors: int = 1,
                 cpus_per_actor: float = 1, gpus_per_actor: float = 0, reference: bool = False,
                 batch_size: int = 16, chunk_prompts: int = 8):
        remote = ray.remote(RolloutActor).options(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
        threads = max(1, int(cpus_per_actor)) if not gpus_per_actor else None
        self.actors = [remote.remote(str(policy), {k: str(v) for k, v in rewards.items()}, max_seq_len, reference,
                                     batch_size, threads) for _ in range(actors)]
        self.chunk_prompts = chunk_prompts

    def load_policy(self, weights: Any) -> None:
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        ray.get([actor.load_policy.remote(ref) for actor in self.actors])

    def rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        chunks = [list(prompts[i:i + self.chunk_prompts]) for i in range(0, len(prompts), self.chunk_prompts)]
        refs = [self.actors[k % len(self.actors)].rollouts.remote(chunk, samples_per_prompt, sampling, seed * 100_003 + k)
                for k, chunk in enumerate(chunks)]
        return [per_prompt for chunk in ray.get(refs) for per_prompt in chunk]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
