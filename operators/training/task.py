"""What a stage plugs into the training loop: a `TrainTask` (model, data, loss, export) and the
types it exchanges with the loop's pieces. A task is plain data, so it travels to Ray Train workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from model.args import ModelArgs
from model.convert import read_model_args
from operators.stage_io import Tracker
from operators.training.config import TrainingConfig

Batch = Mapping[str, torch.Tensor]


@dataclass
class LossOutput:
    """A micro-batch's loss summed over its units (not averaged: the loop divides by the global
    count), and sums of extra quantities to report the same way (e.g. correctly ranked pairs)."""

    total: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class StepLoader(Protocol):
    def next_step(self, model: nn.Module) -> list[Batch]:
        """This rank's micro-batches for the next optimizer step (the model: for loaders that generate)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class TrainTask(Protocol):
    """What a stage plugs into the loop. Plain data, so it travels to Ray Train workers."""

    settings: TrainingConfig
    model_args: ModelArgs
    total_steps: int
    tracker: Tracker
    stage: str  # the stage's name (`io.stage`), for messages about the run

    def build_model(self) -> nn.Module:
        """The model on CPU, deterministically (seeded init or loaded weights)."""

    def loader(self, env: WorkerEnv) -> StepLoader: ...

    def units(self, batch: Batch) -> int:
        """How many loss units (supervised tokens, pairs) the batch holds; counted without the model."""

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput: ...

    def export(self, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
        """Write the full, unsharded model (rank 0, at the end) in its published layout."""

    def flops_per_token(self) -> float | None:
        """Training FLOPs per token for MFU, or None where it does not apply."""

    # Optional: a task with held-out data also defines
    #     def validation_batches(self, env: WorkerEnv) -> list[Batch]
    # this rank's held-out micro-batches, the same number on every rank (FSDP's forward is a
    # collective), scored every `settings.eval_every` steps with `loss` and logged as val/<name>.
    # A task that fine-tunes a checkpoint defines
    #     def starting_weights(self) -> StartingWeights   (operators/training/sharded_load.py)
    # its model's structure and the checkpoint's tensors one by one, so that on several workers the
    # loop builds it on the meta device and each worker loads its shard, not the whole model.
    # And a task that trains two models at different rates (PPO's policy and critic) defines
    #     def lr_scales(self) -> dict[str, float]
    # parameter-name prefix -> multiple of `settings.peak_lr`, the schedule applied to all alike.


def fine_tuning_args(model_dir: Path, seq_len: int) -> ModelArgs:
    """The shape of the Hugging Face model a task starts from, its context stretched to the task's
    `seq_len` where that is longer (rotary tables are computed, not learned: the weights still fit).

    It reads config.json: a task calls it once (a `cached_property`), not on every use.
    """
    args = read_model_args(model_dir)
    return args.replace(max_seq_len=max(args.max_seq_len, seq_len))
