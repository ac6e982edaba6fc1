"""Answers that say nothing: no text before their EOS.

Such an answer is never a fine-tuning target in the stages that train on the policy's own answers
(Ghost Attention, safety context distillation): a model learns from it to end its answer at once,
and the reward models score such answers above many real ones (chat_smollm2: 25 of the 36 answers
safety distillation kept were empty, and the final model then left 22 of 41 held-out prompts
unanswered).
"""

from __future__ import annotations

from model.tokenizer import Tokenizer
from operators.rollout.engine import Rollout


def says_something(tokenizer: Tokenizer, rollout: Rollout) -> bool:
    """Whether the answer has text before its EOS."""
    return bool(tokenizer.decode([t for t in rollout.response if t != tokenizer.eos_id]).strip())
