"""The per-worker training loop, the same under Ray Train and in a plain process.

    build model (seeded, on CPU: identical for any world size) -> AC -> compile -> FSDP2
    AdamW + warmup/cosine; resume model, optimizer, schedule, data position, RNG if a checkpoint exists
    for each step: accumulate micro-batches to the global batch, clip at 1.0, step
        rank 0, every log_every steps: MLflow metrics and a console line (loss, lr, tokens/s, ETA)
        every checkpoint_every steps and at the end: checkpoint (all ranks), reported to the store
    at the end: the full model in Hugging Face layout inside the last checkpoint (rank 0)
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from model.args import ModelArgs, get_config
from model.convert import write_checkpoint
from model.llama import Transformer
from operators.training.checkpoint import CheckpointStore, load_checkpoint, save_checkpoint, set_rng_state, trainer_state
from operators.formats.tokens import TokenCorpus, WindowLoader
from operators.training.optimizer import build_optimizer
from operators.training.parallel import apply_activation_checkpointing, apply_compile, apply_fsdp, set_gradient_sync
from operators.training.schedule import build_lr_scheduler
from operators.training.throughput import device_peak_flops, flops_per_token, mfu

if TYPE_CHECKING:
    from operators.pretrain.stage import PretrainStageConfig

log = logging.getLogger(__name__)

HF_EXPORT_DIR = "hf"  # inside the final checkpoint
# Fault injection for the resume tests: "STEP:PATH" makes every worker raise once after STEP,
# the first time (PATH is created as the "already failed" marker).
FAULT_ENV = "LLAMA2_PRETRAIN_FAULT_ONCE"


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook; never raised unless LLAMA2_PRETRAIN_FAULT_ONCE is set."""


def _maybe_fail(step: int, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if step == int(at) and not Path(f"{marker}.{rank}").exists():
        Path(f"{marker}.{rank}").touch()
        raise InjectedFault(f"injected fault after step {step} on rank {rank} ({FAULT_ENV})")


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, resolved by the driver (plain data: it travels to Ray workers)."""

    config: PretrainStageConfig
    shards: list[Path]
    mixing_weights: dict[str, float]
    vocab_size: int
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None

    @property
    def model_args(self) -> ModelArgs:
        args = get_config(self.config.model_size).replace(**self.config.model_overrides)
        return args.replace(vocab_size=self.vocab_size, max_seq_len=self.config.seq_len)


@dataclass
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def grad_accumulation_steps(global_batch_tokens: int, seq_len: int, micro_batch: int, world_size: int) -> int:
    per_micro_step = seq_len * micro_batch * world_size
    if global_batch_tokens % per_micro_step:
        raise ValueError(
            f"global_batch_tokens={global_batch_tokens} is not a multiple of seq_len x micro_batch_size x "
            f"num_workers = {seq_len} x {micro_batch} x {world_size} = {per_micro_step}"
        )
    return global_batch_tokens // per_micro_step


def build_model(job: TrainJob, env: WorkerEnv) -> Transformer:
    cfg = job.config
    torch.manual_seed(cfg.seed)
    model = Transformer(job.model_args)
    model.init_weights()
    model.to(env.device)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        apply_compile(model)
    if dist.is_initialized():
        mesh = dist.device_mesh.init_device_mesh(env.device.type, (env.world_size,))
        apply_fsdp(model, mesh, bf16=env.device.type == "cuda" and cfg.bf16)
    return model


class _Metrics:
    """Rank 0's MLflow client for the stage's run; a no-op without one."""

    def __init__(self, job: TrainJob, rank: int):
        self.run_id = job.mlflow_run_id if rank == 0 else None
        self.client = None
        if self.run_id and job.tracking_uri:
            from mlflow import MlflowClient

            self.client = MlflowClient(job.tracking_uri)

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


def _mean_across_ranks(losses: list[torch.Tensor]) -> list[float]:
    """Per-step losses averaged over ranks, fetched once per logging window (one host sync, not one per step)."""
    stacked = torch.stack(losses)
    if dist.is_initialized():
        dist.all_reduce(stacked, op=dist.ReduceOp.AVG)
    values = stacked.tolist()
    if not all(map(math.isfinite, values)):
        raise FloatingPointError(f"loss became {values} in the last {len(values)} steps; lower peak_lr or check the data")
    return values


def _full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded, unwrapped parameter names and values on CPU (a collective under FSDP)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v for k, v in get_model_state_dict(model, options=options).items() if not k.startswith("rope_")}


def train(job: TrainJob, store: CheckpointStore, env: WorkerEnv, stop_after_step: int | None = None) -> list[float]:
    """Train to `config.max_steps` (or `stop_after_step`, which tests use to simulate a kill); return the loss history."""
    cfg = job.config
    model = build_model(job, env)
    optimizer = build_optimizer(
        model, cfg.peak_lr, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps, cfg.weight_decay, cfg.decay_embeddings
    )
    scheduler = build_lr_scheduler(optimizer, cfg.peak_lr, cfg.warmup_steps, cfg.decay_steps or cfg.max_steps, cfg.min_lr_ratio)
    corpus = TokenCorpus.open(job.shards, cfg.seed, cfg.validation_fraction)
    loader = WindowLoader(corpus, cfg.seq_len, cfg.micro_batch_size, job.mixing_weights, cfg.seed, env.rank, env.world_size)
    accum = grad_accumulation_steps(cfg.global_batch_tokens, cfg.seq_len, cfg.micro_batch_size, env.world_size)

    step, history = 0, []
    with store.latest() as path:
        if path is not None:
            state = load_checkpoint(path, model, optimizer, env.rank)
            step, history = state["step"], state["loss_history"]
            scheduler.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            log.info("resumed from %s at step %d", path, step)

    metrics = _Metrics(job, env.rank)
    flops_tok = flops_per_token(job.model_args, _num_params_no_embedding(job.model_args), cfg.seq_len)
    peak = device_peak_flops(env.device)
    tokens_per_step = cfg.global_batch_tokens
    last = stop_after_step or cfg.max_steps
    window_start, window_steps, pending = time.perf_counter(), 0, []
    while step < last:
        loss_sum = torch.zeros((), device=env.device)
        for micro in range(accum):
            set_gradient_sync(model, micro == accum - 1)
            inputs, targets = (t.to(env.device, non_blocking=True) for t in loader.next_batch())
            logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()) / accum
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        pending.append(loss_sum)
        final = step == cfg.max_steps
        checkpoint_now = step % cfg.checkpoint_every == 0 or final
        if step % cfg.log_every == 0 or step == last or checkpoint_now:
            history.extend(_mean_across_ranks(pending))
            pending = []

        if step % cfg.log_every == 0 or step == last:
            elapsed = time.perf_counter() - window_start
            tps = tokens_per_step * window_steps / elapsed
            values = {"loss": history[-1], "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_s": tps,
                      "tokens_seen": step * tokens_per_step}
            utilisation = mfu(tps / env.world_size, flops_tok, peak)
            if utilisation is not None:
                values["mfu"] = utilisation
            metrics.log(step, values)
            if env.rank == 0:
                eta = (cfg.max_steps - step) * elapsed / window_steps
                log.info("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %s",
                         step, cfg.max_steps, history[-1], lr, values["grad_norm"], tps, _clock(eta))
            window_start, window_steps = time.perf_counter(), 0

        if checkpoint_now:
            full = _full_state_dict(model) if final else None  # collective: every rank takes part

            def write(path: Path) -> None:
                save_checkpoint(path, model, optimizer, trainer_state(step, scheduler, loader.state_dict(), history),
                                env.rank, job.model_args)
                if full is not None and env.rank == 0:
                    write_checkpoint(path / HF_EXPORT_DIR, "hf", job.model_args, full)

            store.save(step, write, {"step": step, "loss": history[-1]})
        _maybe_fail(step, env.rank)
    return history


def _num_params_no_embedding(args: ModelArgs) -> int:
    with torch.device("meta"):
        return Transformer(args).num_params(exclude_embedding=True)


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


def ray_train_loop(job: TrainJob) -> None:
    """Ray Train's `train_loop_per_worker`."""
    from operators.training.checkpoint import RayCheckpoints

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    train(job, RayCheckpoints(), worker_env_from_ray(job.config.use_gpu))
