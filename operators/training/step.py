"""One optimizer step: gradients over this rank's micro-batches, clipping, the non-finite guard, the update.

Nothing here reads a value back to the host (except where the guard's device allows it for
free): the step's metrics stay on the device until the metrics window fetches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from operators.training.collectives import global_sum
from operators.training.nonfinite import NonFiniteGuard
from operators.training.parallel import set_gradient_sync
from operators.training.task import Batch, TrainTask, WorkerEnv


@dataclass
class StepResult:
    names: list[str]  # "loss" and the task's extras, sorted
    values: torch.Tensor  # per name: this rank's sum over the step / the global unit count (on the device)
    grad_norm: torch.Tensor  # global, before clipping
    lr: float  # the step's learning rate
    tokens: int  # this rank's tokens, padding included


def accumulate_gradients(
    task: TrainTask, model: nn.Module, batches: list[Batch], env: WorkerEnv
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backward over this rank's micro-batches of one step, each unit weighted 1 / (units of the whole
    global batch); returns this rank's sums of the loss and extras, and the global unit count.

    FSDP averages gradients over ranks, so the loss is scaled by the world size to undo that:
    the result is the gradient of (sum of every unit's loss) / (count of all units), however the
    global batch is split into micro-batches and workers.
    """
    units = global_sum(torch.tensor(float(sum(task.units(b) for b in batches)), device=env.device))
    scale = env.world_size / units.clamp(min=1)
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=env.device)}
    for micro, batch in enumerate(batches):
        set_gradient_sync(model, micro == len(batches) - 1)
        out = task.loss(model, {k: v.to(env.device, non_blocking=True) for k, v in batch.items()})
        (out.total * scale).backward()
        for name, value in {"loss": out.total, **out.extras}.items():
            sums[name] = sums.get(name, torch.zeros((), device=env.device)) + value.detach().float()
    return sums, units


def train_step(task: TrainTask, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler,
               batches: list[Batch], env: WorkerEnv, guard: NonFiniteGuard, step: int) -> StepResult:
    """Optimizer step number `step` (1-based) on `batches`; the guard sees it before the update."""
    sums, units = accumulate_gradients(task, model, batches, env)
    names = sorted(sums)
    values = torch.stack([sums[name] for name in names]) / units
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), task.settings.grad_clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    guard.check(step, values, grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(names, values, grad_norm, lr, sum(int(batch["tokens"].numel()) for batch in batches))
