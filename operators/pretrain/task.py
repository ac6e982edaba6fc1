"""Pretraining as a task of the shared loop: a fresh Llama, token windows, next-token cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.args import ModelArgs, get_config
from model.convert import write_checkpoint
from model.llama import Transformer
from operators.formats.tokens import TokenCorpus
from operators.pretrain.config import PretrainStageConfig, grad_accumulation_steps
from operators.pretrain.windows import WindowLoader
from operators.stage_io import NullTracker, Tracker
from operators.training.task import Batch, LossOutput, WorkerEnv
from operators.training.throughput import transformer_flops_per_token


class _Windows:
    """A step's micro-batches of token windows for one rank, from the mixed global plan."""

    def __init__(self, windows: WindowLoader, accum: int):
        self.windows, self.accum = windows, accum

    def next_step(self, model: nn.Module) -> list[Batch]:
        return [dict(zip(("tokens", "targets"), self.windows.next_batch())) for _ in range(self.accum)]

    def state_dict(self) -> dict[str, Any]:
        return self.windows.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.windows.load_state_dict(state)


@dataclass(frozen=True)
class PretrainTask:
    """Everything a worker needs, resolved by the driver (plain data: it travels to Ray workers)."""

    settings: PretrainStageConfig
    shards: list[Path]
    mixing_weights: dict[str, float]
    vocab_size: int
    tracker: Tracker = field(default_factory=NullTracker)
    stage: str = "training"  # the stage it trains for, in messages (its runner passes io.stage)

    @property
    def model_args(self) -> ModelArgs:
        args = get_config(self.settings.model_size).replace(**self.settings.model_overrides)
        return args.replace(vocab_size=self.vocab_size, max_seq_len=self.settings.seq_len)

    @property
    def total_steps(self) -> int:
        return self.settings.max_steps

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.settings.seed)
        model = Transformer(self.model_args)
        model.init_weights()
        return model

    def loader(self, env: WorkerEnv) -> _Windows:
        s = self.settings
        corpus = TokenCorpus.open(self.shards, s.seed, s.validation_fraction)
        windows = WindowLoader(corpus, s.seq_len, s.micro_batch_size, self.mixing_weights, s.seed, env.rank, env.world_size)
        return _Windows(windows, grad_accumulation_steps(s.global_batch_tokens, s.seq_len, s.micro_batch_size,
                                                          env.world_size))

    def validation_batches(self, env: WorkerEnv) -> list[Batch]:
        """This rank's share of the first held-out windows: `eval_batches` micro-batches, fewer (the same
        number on every rank) when the held-out documents hold fewer windows."""
        s = self.settings
        held_out = TokenCorpus.open(self.shards, s.seed, s.validation_fraction).validation
        per_batch = s.micro_batch_size * env.world_size
        batches = []
        for b in range(min(s.eval_batches, held_out.num_windows(s.seq_len) // per_batch)):
            first = b * per_batch + env.rank * s.micro_batch_size
            rows = np.stack([held_out.window(w, s.seq_len) for w in range(first, first + s.micro_batch_size)])
            window = torch.from_numpy(rows.astype(np.int64))
            batches.append({"tokens": window[:, :-1], "targets": window[:, 1:]})
        return batches

    def units(self, batch: Batch) -> int:
        return batch["targets"].numel()

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        logits = model(batch["tokens"])
        return LossOutput(F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), reduction="sum"))

    def export(self, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
        write_checkpoint(directory, "hf", self.model_args, state_dict)

    def flops_per_token(self) -> float | None:
        return transformer_flops_per_token(self.model_args, self.settings.seq_len)
