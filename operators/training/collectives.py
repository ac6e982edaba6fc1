"""Sums over all workers of a run; in one process (no process group) the values are already the total."""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over all ranks, in place (a collective: every rank calls it)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
