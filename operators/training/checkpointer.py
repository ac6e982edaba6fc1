"""When the loop checkpoints, what goes in, and where a run picks up again.

A checkpoint is written every `checkpoint_every` steps and at the last step (every rank its shards
of model and optimizer plus its trainer state, `checkpoint.py`); the last one also holds the task's
export of the full model in EXPORT_DIR, LoRA's adapters merged into it, which the stage publishes.
Where checkpoints live is the `CheckpointStore`'s business (Ray Train, or local directories).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from operators.training.checkpoint import CheckpointStore, load_checkpoint, save_checkpoint, set_rng_state, trainer_state
from operators.training.config import LoRAConfig
from operators.training.lora import merge_adapters
from operators.training.task import StepLoader, TrainTask, WorkerEnv

log = logging.getLogger(__name__)

EXPORT_DIR = "export"  # inside the final checkpoint: the task's export of the full model


@dataclass
class Progress:
    """Where a run stands after its last completed step (a fresh run: nothing yet)."""

    step: int = 0
    history: list[float] = field(default_factory=list)  # the loss of every step
    tokens_seen: int = 0


class Checkpointer:
    """Saves and restores everything a run needs to continue bit for bit: model, optimizer, LR
    schedule, data position, RNG state, loss history and tokens seen."""

    def __init__(self, store: CheckpointStore, task: TrainTask, model: nn.Module, optimizer: Optimizer,
                 scheduler: LRScheduler, loader: StepLoader, env: WorkerEnv):
        self.store, self.task, self.env = store, task, env
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.every, self.total_steps = task.settings.checkpoint_every, task.total_steps

    def restore(self) -> Progress:
        """Load the store's latest checkpoint into model, optimizer, schedule, loader and RNG, if there is one."""
        with self.store.latest() as path:
            if path is None:
                return Progress()
            state = load_checkpoint(path, self.model, self.optimizer, self.env.rank)
            self.scheduler.load_state_dict(state["scheduler"])
            self.loader.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            log.info("resumed from %s at step %d", path, state["step"])
            return Progress(state["step"], state["loss_history"], state.get("tokens_seen", 0))

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def save(self, step: int, history: list[float], tokens_seen: int) -> None:
        """Every rank: write the checkpoint of `step` (and, at the last step, the task's export) to the store."""
        final = step == self.total_steps
        lora = self.task.settings.lora
        full = full_state_dict(self.model, lora) if final else None  # collective: every rank takes part

        def write(path: Path) -> None:
            state = trainer_state(step, self.scheduler, self.loader.state_dict(), history, tokens_seen)
            save_checkpoint(path, self.model, self.optimizer, state, self.env.rank, self.task.model_args,
                            lora.scaling if lora is not None else None)
            if full is not None and self.env.rank == 0:
                self.task.export(full, path / EXPORT_DIR)

        self.store.save(step, write, {"step": step, "loss": history[-1]})


def full_state_dict(model: nn.Module, lora: LoRAConfig | None) -> dict[str, torch.Tensor]:
    """Unsharded, unwrapped parameter names and values on CPU (a collective under FSDP), LoRA's
    adapters merged into the weights: the plain model every loader reads."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {k: v for k, v in get_model_state_dict(model, options=options).items() if "rope_" not in k}
    return merge_adapters(state, lora.scaling) if lora is not None else state
