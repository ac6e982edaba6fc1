"""Gradients of one accumulation step computed by FSDP2 workers: spawned processes over gloo, each
preparing the task's model as the loop does, so a test compares them with one process's."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from operators.training.loop import prepare_model
from operators.training.step import accumulate_gradients
from operators.training.task import Batch, TrainTask, WorkerEnv


def fsdp_gradients(task: TrainTask, micro_batches: list[Batch], world: int, scratch: Path) -> dict[str, torch.Tensor]:
    """Every parameter's full gradient after `world` workers accumulate `micro_batches`, dealt to
    them in equal consecutive parts (parameters without a gradient left out)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    out = scratch / "gradients.pkl"
    mp.start_processes(_worker, args=(world, task, micro_batches, f"file://{scratch / 'rendezvous'}", str(out)),
                       nprocs=world, start_method="spawn")
    return pickle.loads(out.read_bytes())


def _worker(rank: int, world: int, task: TrainTask, micro_batches: list[Batch], init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    env = WorkerEnv(rank, world)
    model = prepare_model(task, env)
    share = len(micro_batches) // world
    accumulate_gradients(task, model, micro_batches[rank * share:(rank + 1) * share], env)
    gradients = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        Path(out).write_bytes(pickle.dumps(gradients))
    dist.barrier()
    dist.destroy_process_group()
