"""The one training loop: pretraining, SFT, the reward models and PPO plug into it as a `TrainTask`.

    task.build_model() (seeded, on CPU: identical for any world size) -> AC -> compile -> FSDP2
    AdamW + warmup/cosine; resume model, optimizer, schedule, data position, RNG if a checkpoint exists
    for each step: the task's loader gives this rank's micro-batches;
        the loss is summed over the step's units (tokens, pairs) and divided by their count over
        the whole global batch, all micro-batches and all workers, so every unit weighs the same
        however the batch is split; clip at 1.0, step
        rank 0, at step 1 and every log_every steps: step metrics to the task's tracker and a
        console line (loss, lr, tokens/s, ETA)
        every eval_every steps, if the task has held-out data: the loss on it (all ranks, no
        gradients), logged as val/loss
        every checkpoint_every steps and at the end: checkpoint (all ranks), reported to the store
    at the end: the task exports the full model (rank 0) inside the last checkpoint
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from model.args import ModelArgs
from operators.stage_io import NullTracker, Tracker
from operators.training.checkpoint import CheckpointStore, load_checkpoint, save_checkpoint, set_rng_state, trainer_state
from operators.training.config import TrainingConfig
from operators.training.optimizer import build_optimizer
from operators.training.parallel import apply_activation_checkpointing, apply_compile, apply_fsdp, set_gradient_sync
from operators.training.schedule import build_lr_scheduler
from operators.training.throughput import device_peak_flops, mfu

log = logging.getLogger(__name__)

EXPORT_DIR = "export"  # inside the final checkpoint: the task's export of the full model
# Fault injection for the resume tests: "STEP:PATH" makes every worker raise once after STEP,
# the first time (PATH is created as the "already failed" marker).
FAULT_ENV = "LLAMA2_TRAIN_FAULT_ONCE"

Batch = Mapping[str, torch.Tensor]


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook; never raised unless LLAMA2_TRAIN_FAULT_ONCE is set."""


@dataclass
class LossOutput:
    """A micro-batch's loss summed over its units (not averaged: the loop divides by the global
    count), and sums of extra quantities to report the same way (e.g. correctly ranked pairs)."""

    total: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


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
    # And a task that trains two models at different rates (PPO's policy and critic) defines
    #     def lr_scales(self) -> dict[str, float]
    # parameter-name prefix -> multiple of `settings.peak_lr`, the schedule applied to all alike.


@dataclass
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _maybe_fail(step: int, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if step == int(at) and not Path(f"{marker}.{rank}").exists():
        Path(f"{marker}.{rank}").touch()
        raise InjectedFault(f"injected fault after step {step} on rank {rank} ({FAULT_ENV})")


def prepare_model(task: TrainTask, env: WorkerEnv) -> nn.Module:
    """The task's model on this worker's device, parallelised from outside (AC, then compile, then FSDP)."""
    model = task.build_model().to(env.device)
    settings = task.settings
    if settings.activation_checkpointing:
        apply_activation_checkpointing(model)
    if settings.compile:
        apply_compile(model)
    if dist.is_initialized():
        mesh = dist.device_mesh.init_device_mesh(env.device.type, (env.world_size,))
        apply_fsdp(model, mesh, bf16=env.device.type == "cuda" and settings.bf16)
    return model


def _global_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def accumulate_gradients(
    task: TrainTask, model: nn.Module, batches: list[Batch], env: WorkerEnv
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backward over this rank's micro-batches of one step, each unit weighted 1 / (units of the whole
    global batch); returns this rank's sums of the loss and extras, and the global unit count.

    FSDP averages gradients over ranks, so the loss is scaled by the world size to undo that:
    the result is the gradient of (sum of every unit's loss) / (count of all units), however the
    global batch is split into micro-batches and workers.
    """
    units = _global_sum(torch.tensor(float(sum(task.units(b) for b in batches)), device=env.device))
    scale = env.world_size / units.clamp(min=1)
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=env.device)}
    for micro, batch in enumerate(batches):
        set_gradient_sync(model, micro == len(batches) - 1)
        out = task.loss(model, {k: v.to(env.device, non_blocking=True) for k, v in batch.items()})
        (out.total * scale).backward()
        for name, value in {"loss": out.total, **out.extras}.items():
            sums[name] = sums.get(name, torch.zeros((), device=env.device)) + value.detach().float()
    return sums, units


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
    totals = _global_sum(torch.stack([*(sums[n] for n in names), torch.tensor(float(units), device=env.device)]))
    count = totals[-1].clamp(min=1)
    return {f"val/{name}": (totals[i] / count).item() for i, name in enumerate(names)}


def _full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded, unwrapped parameter names and values on CPU (a collective under FSDP)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v for k, v in get_model_state_dict(model, options=options).items() if "rope_" not in k}


def train(task: TrainTask, store: CheckpointStore, env: WorkerEnv, stop_after_step: int | None = None) -> list[float]:
    """Train to `task.total_steps` (or `stop_after_step`, which tests use to simulate a kill); return the loss history."""
    settings = task.settings
    model = prepare_model(task, env)
    optimizer = build_optimizer(model, settings.peak_lr, (settings.adam_beta1, settings.adam_beta2), settings.adam_eps,
                                settings.weight_decay, settings.decay_embeddings,
                                task.lr_scales() if hasattr(task, "lr_scales") else None)
    scheduler = build_lr_scheduler(optimizer, settings.peak_lr, settings.warmup(task.total_steps),
                                   settings.decay_steps or task.total_steps, settings.min_lr_ratio)
    loader = task.loader(env)
    held_out = held_out_batches(task, env)

    step, history, tokens_seen = 0, [], 0
    with store.latest() as path:
        if path is not None:
            state = load_checkpoint(path, model, optimizer, env.rank)
            step, history, tokens_seen = state["step"], state["loss_history"], state.get("tokens_seen", 0)
            scheduler.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            log.info("resumed from %s at step %d", path, step)

    tracker = task.tracker if env.rank == 0 else NullTracker()
    flops_tok, peak = task.flops_per_token(), device_peak_flops(env.device)
    last = stop_after_step or task.total_steps
    window_start, window_steps, window_tokens, window_flushed = time.perf_counter(), 0, 0, 0.0
    pending: list[torch.Tensor] = []
    while step < last:
        batches = loader.next_step(model)
        sums, units = accumulate_gradients(task, model, batches, env)
        window_tokens += sum(int(batch["tokens"].numel()) for batch in batches)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        pending.append(torch.stack([sums[name] for name in sorted(sums)]) / units)
        names = sorted(sums)
        final = step == task.total_steps
        checkpoint_now = step % settings.checkpoint_every == 0 or final
        log_now = step % settings.log_every == 0 or step == last or step == 1  # step 1: the curve starts at the start

        if log_now or checkpoint_now:
            means = _mean_over_steps(pending)
            history.extend(row[names.index("loss")] for row in means)
            current = dict(zip(names, means[-1]))
            pending = []
            flushed = _global_sum(torch.tensor(float(window_tokens), device=env.device)).item()
            tokens_seen, window_tokens, window_flushed = tokens_seen + int(flushed), 0, window_flushed + flushed
        if log_now:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_flushed / elapsed
            values = {f"train/{name}": value for name, value in current.items()}
            values |= {"train/lr": lr, "train/grad_norm": grad_norm.item(), "train/tokens_per_s": tokens_per_s,
                       "train/tokens_seen": tokens_seen}
            utilisation = mfu(tokens_per_s / env.world_size, flops_tok, peak) if flops_tok else None
            if utilisation is not None:
                values["train/mfu"] = utilisation
            tracker.log_metrics(values, step)
            if env.rank == 0:
                eta = (task.total_steps - step) * elapsed / window_steps
                log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %s",
                         step, task.total_steps, history[-1], lr, values["train/grad_norm"], tokens_per_s, _clock(eta))
            window_start, window_steps, window_flushed = time.perf_counter(), 0, 0.0

        if held_out and step % settings.eval_every == 0:
            eval_started = time.perf_counter()
            scores = validation_metrics(task, model, held_out, env)
            tracker.log_metrics(scores, step)
            if env.rank == 0:
                log.info("step %d/%d  val/loss %.4f", step, task.total_steps, scores["val/loss"])
            window_start += time.perf_counter() - eval_started  # tokens/s counts training only

        if checkpoint_now:
            full = _full_state_dict(model) if final else None  # collective: every rank takes part

            def write(path: Path) -> None:
                state = trainer_state(step, scheduler, loader.state_dict(), history, tokens_seen)
                save_checkpoint(path, model, optimizer, state, env.rank, task.model_args)
                if full is not None and env.rank == 0:
                    task.export(full, path / EXPORT_DIR)

            store.save(step, write, {"step": step, "loss": history[-1]})
        _maybe_fail(step, env.rank)
    return history


def _mean_over_steps(rows: list[torch.Tensor]) -> list[list[float]]:
    """Per-step means over all ranks (each row: this rank's sums / the global units), fetched once per
    logging window (one collective, one host sync)."""
    values = _global_sum(torch.stack(rows)).tolist()
    if not all(math.isfinite(v) for row in values for v in row):
        raise FloatingPointError(f"loss became non-finite in the last {len(values)} steps; lower peak_lr or check the data")
    return values


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def worker_env_from_ray(use_gpu: bool) -> WorkerEnv:
    import ray.train

    ctx = ray.train.get_context()
    if use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return WorkerEnv(ctx.get_world_rank(), ctx.get_world_size(), device)


def ray_train_loop(task: TrainTask) -> None:
    """Ray Train's `train_loop_per_worker`."""
    from operators.training.checkpoint import RayCheckpoints

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(task, RayCheckpoints(), worker_env_from_ray(task.settings.use_gpu))
