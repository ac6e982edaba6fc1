"""The one training loop: pretraining, SFT, the reward models and PPO plug into it as a `TrainTask`.

    task.build_model() (seeded, on CPU: identical for any world size) -> frozen layers, LoRA adapters
        (trainable.py) -> AC -> compile -> FSDP2; a task starting from a checkpoint, on several workers:
        built on the meta device, sharded, then each worker loads its shard (sharded_load.py)
    AdamW + warmup/cosine; resume model, optimizer, schedule, data position, RNG if a checkpoint exists
    for each step (step.py): the task's loader gives this rank's micro-batches;
        the loss is summed over the step's units (tokens, pairs) and divided by their count over
        the whole global batch, all micro-batches and all workers, so every unit weighs the same
        however the batch is split; clip at 1.0; a non-finite loss or gradient stops the run
        before its update (nonfinite.py); step
        at step 1, every log_every steps and before a checkpoint (metrics_window.py): the window's
        metrics fetched from the devices; at log steps rank 0 logs them and a console line
        (loss, lr, tokens/s, ETA)
        every eval_every steps, if the task has held-out data: the loss on it (all ranks, no
        gradients), logged as val/loss (validation.py)
        every checkpoint_every steps and at the end: checkpoint (all ranks), reported to the store;
        the last one holds the task's export of the full model (checkpointer.py)
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from operators.stage_io import NullTracker
from operators.training.checkpoint import CheckpointStore
from operators.training.checkpointer import Checkpointer
from operators.training.fault_injection import inject_fault
from operators.training.metrics_window import MetricsWindow
from operators.training.nonfinite import NonFiniteGuard
from operators.training.optimizer import build_optimizer
from operators.training.parallel import apply_activation_checkpointing, apply_compile, apply_fsdp
from operators.training.schedule import build_lr_scheduler
from operators.training.sharded_load import StartingWeights, build_on_meta, load_shards
from operators.training.step import train_step
from operators.training.task import TrainTask, WorkerEnv
from operators.training.trainable import check_trainable, select_trainable
from operators.training.validation import held_out_batches, validate


def prepare_model(task: TrainTask, env: WorkerEnv) -> nn.Module:
    """The task's model on this worker's device, its trainable parameters chosen, parallelised from
    outside (AC, then compile, then FSDP). A task starting from a checkpoint, on several workers
    without LoRA, is built on the meta device and each worker loads its shard only (sharded_load.py)."""
    settings = task.settings
    check_trainable(settings, task.model_args.n_layers, task.stage)
    starting = _sharded_start(task)
    model = build_on_meta(starting) if starting else task.build_model()
    # First what trains: the wrappers below then wrap the adapted blocks, and FSDP shards what is frozen as such.
    select_trainable(model, settings)
    if not starting:
        model = model.to(env.device)
    if settings.activation_checkpointing:
        apply_activation_checkpointing(model)
    if settings.compile:
        apply_compile(model)
    if dist.is_initialized():
        mesh = dist.device_mesh.init_device_mesh(env.device.type, (env.world_size,))
        apply_fsdp(model, mesh, bf16=env.device.type == "cuda" and settings.bf16)
    if starting:
        load_shards(model, starting, env.device)
    return model


def _sharded_start(task: TrainTask) -> StartingWeights | None:
    if not dist.is_initialized() or task.settings.lora is not None or not hasattr(task, "starting_weights"):
        return None
    return task.starting_weights()


def train(task: TrainTask, store: CheckpointStore, env: WorkerEnv, stop_after_step: int | None = None) -> list[float]:
    """Train to `task.total_steps` (or `stop_after_step`, which tests use to simulate a kill); return the loss history."""
    settings, total = task.settings, task.total_steps
    model = prepare_model(task, env)
    optimizer = build_optimizer(model, settings.peak_lr, (settings.adam_beta1, settings.adam_beta2), settings.adam_eps,
                                settings.weight_decay, settings.decay_embeddings,
                                task.lr_scales() if hasattr(task, "lr_scales") else None)
    scheduler = build_lr_scheduler(optimizer, settings.peak_lr, settings.warmup(total), settings.decay_steps or total,
                                   settings.min_lr_ratio)
    loader = task.loader(env)
    held_out = held_out_batches(task, env)
    checkpointer = Checkpointer(store, task, model, optimizer, scheduler, loader, env)
    progress = checkpointer.restore()
    tracker = task.tracker if env.rank == 0 else NullTracker()
    last = stop_after_step or total
    window = MetricsWindow(task, env, tracker, last, progress.history, progress.tokens_seen)
    guard = NonFiniteGuard(optimizer, task.stage, env.device)
    for step in range(progress.step + 1, last + 1):
        window.add(train_step(task, model, optimizer, scheduler, loader.next_step(model), env, guard, step))
        log_now, checkpoint_now = window.log_due(step), checkpointer.due(step)
        if log_now or checkpoint_now:
            guard.raise_if_tripped()  # before anything from a non-finite step is logged or saved
            window.fetch()
        if log_now:
            window.log(step)
        if held_out and step % settings.eval_every == 0:
            with window.paused():
                validate(task, model, held_out, env, tracker, step)
        if checkpoint_now:
            checkpointer.save(step, window.history, window.tokens_seen)
        inject_fault(step, env.rank)
    return window.history


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
    if task.settings.threads and not task.settings.use_gpu:
        torch.set_num_threads(task.settings.threads)  # Ray set OMP_NUM_THREADS to the worker's CPUs
    train(task, RayCheckpoints(), worker_env_from_ray(task.settings.use_gpu))
