"""What a rollout engine does, whichever runs it: load the policy's weights; roll prompts out into
token ids, log-probs, an EOS flag and the scores of the models it was built with.

Rejection sampling, PPO, Ghost Attention, safety distillation and the chat evaluation all draw
through this interface, so a serving engine such as vLLM can replace our Ray actors on GPU clusters:
it needs to accept new weights as Hugging Face-named parts in Ray's object store, generate token ids for
token-id prompts with the sampled tokens' log-probs, and report whether a sequence ended with the
tokenizer's EOS. Token ids stay token ids from generation through scoring and training: nothing is
decoded and re-encoded on the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


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
    scores: dict[str, float]  # raw reward-model scores read at the last token, by label (helpfulness, safety)
    ref_logprobs: list[float] = field(default_factory=list)  # under the reference policy (PPO)


class ChunkHandler(Protocol[T_co]):
    """Picklable: called where the rollouts are, once per chunk of prompts."""

    def __call__(self, first_prompt: int, rollouts: list[list[Rollout]]) -> T_co:
        """`rollouts` are those of prompts `first_prompt`, `first_prompt + 1`, ... of the call."""


class RolloutEngine(Protocol):
    weights_dtype: torch.dtype  # what the policy's weights are held in: what a weight update is sent as

    def load_policy(self, parts: Iterable[Any]) -> None:
        """Update the policy in place from parts of its weights, taken as they come: each a state dict
        under Hugging Face names and layout, or a Ray object ref to one; a weight no part names keeps
        its value."""

    def rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling,
                 seed: int) -> list[list[Rollout]]:
        """`samples_per_prompt` scored responses for each prompt, in prompt order."""

    def map_rollouts(self, prompts: Sequence[list[int]], samples_per_prompt: int, sampling: Sampling, seed: int,
                     handle: ChunkHandler[T]) -> list[T]:
        """The same rollouts, each chunk of prompts handed to `handle` where it was generated, and only
        what `handle` returns comes back, in prompt order: for a stage that writes its samples as shards
        and keeps a summary, so the samples never travel to the driver."""

    def close(self) -> None:
        """Release the engine's workers and their devices."""
