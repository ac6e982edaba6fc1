"""Supervised fine-tuning as a task of the shared loop: the base weights, packed rows, masked cross-entropy.

The plan of rows is a pure function of the examples, the seed and the epoch (a seeded shuffle per
epoch, then packing), so every rank computes the same plan and reads only its slice of each
micro-step, and a resumed run continues at the same row. The last step of the run is filled
from the start of the plan, so every step has the same number of rows on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.args import ModelArgs
from model.convert import load_model, write_checkpoint
from model.hf_tensors import HfTensors
from model.llama import Transformer
from operators.chat.packing import IGNORE, Example, Row, collate, concatenate, pack
from operators.chat.sft_config import SFTConfig
from operators.stage_io import NullTracker, Tracker
from operators.training.sharded_load import StartingWeights
from operators.training.task import Batch, LossOutput, WorkerEnv, fine_tuning_args
from operators.training.throughput import transformer_flops_per_token


class RowPlan:
    """Every training row of the run, in order: epoch by epoch, a seeded shuffle of the examples, packed."""

    def __init__(self, examples: Sequence[Example], seq_len: int, epochs: int, seed: int, packing: bool):
        self.examples, self.seq_len = examples, seq_len
        self.rows: list[Row] = []
        for epoch in range(epochs):
            order = np.random.default_rng([seed, epoch]).permutation(len(examples)).tolist()
            self.rows.extend((pack if packing else concatenate)(examples, order, seq_len))

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> Row:
        return self.rows[index % len(self.rows)]


class RowLoader:
    """This rank's micro-batches of each step from the global plan: step s holds rows [s*B, (s+1)*B)."""

    def __init__(self, plan: RowPlan, micro_batch: int, accumulation: int, env: WorkerEnv):
        self.plan, self.micro_batch, self.accumulation, self.env = plan, micro_batch, accumulation, env
        self.step = 0

    def next_step(self, model: nn.Module) -> list[Batch]:
        per_micro = self.micro_batch * self.env.world_size
        first = self.step * per_micro * self.accumulation
        self.step += 1
        batches = []
        for micro in range(self.accumulation):
            start = first + micro * per_micro + self.env.rank * self.micro_batch
            batches.append(collate([self.plan.row(i) for i in range(start, start + self.micro_batch)]))
        return batches

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])


def steps_for(plan_rows: int, global_batch: int) -> int:
    return max(1, -(-plan_rows // global_batch))


def masked_lm_loss(model: nn.Module, batch: Batch) -> LossOutput:
    """Cross-entropy summed over the supervised targets (the loop divides by their global count)."""
    logits = model(batch["tokens"], positions=batch["positions"], segments=batch["segments"])
    return LossOutput(F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE,
                                      reduction="sum"))


def supervised_tokens(batch: Batch) -> int:
    return int((batch["targets"] != IGNORE).sum())


@dataclass(frozen=True)
class SFTTask:
    """The base weights, the examples and the settings; plain data, so it travels to Ray Train workers.

    The model's shape (config.json) and the row plan are computed once, on first use, not on every
    access: the loop reads `total_steps` at the start and the loader takes the same plan.
    """

    settings: SFTConfig
    base_model: Path  # a Hugging Face directory
    examples: list[Example]
    tracker: Tracker = field(default_factory=NullTracker)
    stage: str = "training"  # the stage it trains for, in messages (its runner passes io.stage)

    @cached_property
    def model_args(self) -> ModelArgs:
        return fine_tuning_args(self.base_model, self.settings.seq_len)

    @cached_property
    def plan(self) -> RowPlan:
        s = self.settings
        return RowPlan(self.examples, s.seq_len, s.epochs, s.seed, s.packing)

    @property
    def total_steps(self) -> int:
        return steps_for(len(self.plan), self.settings.global_batch_sequences)

    def build_model(self) -> nn.Module:
        return load_model(self.base_model, "hf", max_seq_len=self.model_args.max_seq_len)

    def starting_weights(self) -> StartingWeights:
        return StartingWeights(lambda: Transformer(self.model_args), {"": HfTensors(self.base_model, self.model_args)})

    def loader(self, env: WorkerEnv) -> RowLoader:
        return RowLoader(self.plan, self.settings.micro_batch_size, self.settings.accumulation(), env)

    def units(self, batch: Batch) -> int:
        return supervised_tokens(batch)

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        return masked_lm_loss(model, batch)

    def export(self, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
        write_checkpoint(directory, "hf", self.model_args, state_dict)

    def flops_per_token(self) -> float | None:
        return transformer_flops_per_token(self.model_args, self.settings.seq_len)
