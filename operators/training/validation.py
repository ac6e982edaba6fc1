"""The loss on a task's held-out data during training: every `eval_every` steps, on all ranks, no gradients."""

from __future__ import annotations

import logging

import torch
from torch import nn

from operators.stage_io import Tracker
from operators.training.collectives import global_sum
from operators.training.task import Batch, TrainTask, WorkerEnv

log = logging.getLogger(__name__)


def held_out_batches(task: TrainTask, env: WorkerEnv) -> list[Batch]:
    """The task's held-out micro-batches for this rank; none when `eval_every` is 0 or the task has no held-out data."""
    if not task.settings.eval_every or not hasattr(task, "validation_batches"):
        return []
    return task.validation_batches(env)


def validation_metrics(task: TrainTask, model: nn.Module, batches: list[Batch], env: WorkerEnv) -> dict[str, float]:
    """`val/loss` (and `val/<extra>`) over the held-out batches of all ranks, each unit weighing the same.
    Every rank calls it: the forward passes and the sum are collectives."""
    model.eval()
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=env.device)}
    units = 0
    with torch.no_grad():
        for batch in batches:
            out = task.loss(model, {k: v.to(env.device, non_blocking=True) for k, v in batch.items()})
            for name, value in {"loss": out.total, **out.extras}.items():
                sums[name] = sums.get(name, torch.zeros((), device=env.device)) + value.float()
            units += task.units(batch)
    model.train()
    names = sorted(sums)
    totals = global_sum(torch.stack([*(sums[n] for n in names), torch.tensor(float(units), device=env.device)]))
    count = totals[-1].clamp(min=1)
    return {f"val/{name}": (totals[i] / count).item() for i, name in enumerate(names)}


def validate(task: TrainTask, model: nn.Module, batches: list[Batch], env: WorkerEnv, tracker: Tracker,
             step: int) -> None:
    """Every rank: score the held-out batches after step `step`; val/* to the tracker and a console line (rank 0)."""
    scores = validation_metrics(task, model, batches, env)
    tracker.log_metrics(scores, step)
    if env.rank == 0:
        log.info("step %d/%d  val/loss %.4f", step, task.total_steps, scores["val/loss"])
