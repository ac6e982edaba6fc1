"""A reward model as a task of the shared loop: the SFT backbone with a scalar head, ranked pairs.

Each pair becomes two sequences, `context + chosen` and `context + rejected` in the chat format
(each ending with the response's EOS, where the score is read). A micro-batch holds `k` pairs as
`2k` right-padded rows: the first `k` chosen, the last `k` rejected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from model.args import ModelArgs
from model.chat_format import encode_dialog
from model.convert import load_model, load_reward_model
from model.checkpoint import read_json
from model.hf_format import REWARD_ARCHITECTURE, save_hf_reward
from model.hf_tensors import HfTensors
from model.reward import RewardModel
from model.tokenizer import Tokenizer
from operators.chat.preferences import margin
from operators.chat.reward_config import RewardConfig
from operators.chat.reward_loss import ranking_loss
from operators.rollout.sequences import collate_sequences
from operators.stage_io import NullTracker, Tracker
from operators.training.sharded_load import StartingWeights
from operators.training.task import Batch, LossOutput, WorkerEnv, fine_tuning_args
from operators.training.throughput import transformer_flops_per_token


@dataclass(frozen=True)
class Pair:
    chosen: np.ndarray  # token ids of context + chosen response (ends with EOS)
    rejected: np.ndarray
    margin: float
    rating: str


def pairs_from_table(table: pa.Table, tokenizer: Tokenizer, margin_kind: str) -> list[Pair]:
    """The pairs of a preferences table, tokenized in the chat format."""
    pairs = []
    for row in table.to_pylist():
        context = json.loads(row["context"])
        sequences = [np.asarray(encode_dialog(tokenizer, [*context, {"role": "assistant", "content": row[side]}]).tokens,
                                dtype=np.int64) for side in ("chosen", "rejected")]
        pairs.append(Pair(*sequences, margin(margin_kind, row["rating"]), row["rating"]))  # type: ignore[arg-type]
    return pairs


def pair_length(pair: Pair) -> int:
    """The longer of the pair's two sequences: what its rows pad to, at least."""
    return max(len(pair.chosen), len(pair.rejected))


def by_length(pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs from shortest to longest (ties keep their order): batched in this order, the rows of a
    batch pad to similar lengths."""
    return sorted(pairs, key=pair_length)


def collate_pairs(pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """`2k` right-padded rows (chosen first), their masks, and the `k` margins."""
    batch = collate_sequences([p.chosen for p in pairs] + [p.rejected for p in pairs])
    return batch | {"margin": torch.tensor([p.margin for p in pairs], dtype=torch.float32)}


def pair_scores(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    scores = model(batch["tokens"], batch["mask"]).float()
    k = batch["margin"].numel()
    return scores[:k], scores[k:]


class PairLoader:
    """This rank's micro-batches of each step: a seeded shuffle of the pairs per epoch, step s holds
    pairs [s*B, (s+1)*B) of that order (the last step filled from the start). Within a step the pairs
    are dealt to micro-batches by length, so each micro-batch pads its rows to a length near their own:
    the step's loss is a sum over the same pairs whatever the dealing, and far fewer padding tokens
    go through the model."""

    def __init__(self, pairs: Sequence[Pair], settings: RewardConfig, env: WorkerEnv):
        self.pairs, self.settings, self.env = pairs, settings, env
        self.order = np.concatenate([np.random.default_rng([settings.seed, epoch]).permutation(len(pairs))
                                     for epoch in range(settings.epochs)])
        self.step = 0

    def next_step(self, model: nn.Module) -> list[Batch]:
        s = self.settings
        first = self.step * s.pairs_per_step
        self.step += 1
        step = by_length([self.pairs[self.order[i % len(self.order)]] for i in range(first, first + s.pairs_per_step)])
        per_micro = s.micro_batch_size * self.env.world_size
        batches = []
        for micro in range(s.accumulation()):
            start = micro * per_micro + self.env.rank * s.micro_batch_size
            batches.append(collate_pairs(step[start:start + s.micro_batch_size]))
        return batches

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


@dataclass(frozen=True)
class RewardTask:
    """The model it starts from, the training pairs and the settings; plain data, so it travels to Ray Train workers."""

    settings: RewardConfig
    start: Path  # a Hugging Face causal LM (the SFT policy) or reward model (the previous round's) directory
    pairs: list[Pair]
    tracker: Tracker = field(default_factory=NullTracker)
    stage: str = "training"  # the stage it trains for, in messages (its runner passes io.stage)

    @cached_property
    def model_args(self) -> ModelArgs:
        return fine_tuning_args(self.start, self.settings.seq_len)

    @property
    def total_steps(self) -> int:
        return max(1, -(-len(self.pairs) * self.settings.epochs // self.settings.pairs_per_step))

    def build_model(self) -> nn.Module:
        if REWARD_ARCHITECTURE in read_json(self.start / "config.json").get("architectures", []):
            # the previous round's reward model, trained again on every batch so far
            return load_reward_model(self.start, max_seq_len=self.model_args.max_seq_len)
        lm = load_model(self.start, "hf", max_seq_len=self.model_args.max_seq_len)
        return RewardModel.from_language_model(lm)

    def starting_weights(self) -> StartingWeights:
        """As `build_model`, one tensor at a time: a language model's backbone gets a zero head, as
        `RewardModel.from_language_model` gives it."""
        args = self.model_args
        fresh = {} if REWARD_ARCHITECTURE in read_json(self.start / "config.json").get("architectures", []) else {
            "output.weight": lambda: torch.zeros(1, args.dim)}
        return StartingWeights(lambda: RewardModel(args), {"": HfTensors(self.start, args, fresh)})

    def loader(self, env: WorkerEnv) -> PairLoader:
        return PairLoader(self.pairs, self.settings, env)

    def units(self, batch: Batch) -> int:
        return batch["margin"].numel()

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        chosen, rejected = pair_scores(model, batch)
        return LossOutput(ranking_loss(chosen, rejected, batch["margin"]).sum(),
                          {"accuracy": (chosen > rejected).float().sum()})

    def export(self, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
        save_hf_reward(directory, self.model_args, state_dict)

    def flops_per_token(self) -> float | None:
        return transformer_flops_per_token(self.model_args, self.settings.seq_len)
