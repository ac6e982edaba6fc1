"""Parallelism applied to a plain `model.llama.Transformer` from outside, torchtitan-style.

Order matters: activation checkpointing wraps a block, `torch.compile` compiles the wrapped
block, and FSDP2 shards last so that its hooks sit outside both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from model.llama import Transformer


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in backward instead of keeping them (memory for ~33% FLOPs)."""
    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block)


def apply_compile(model: Transformer) -> None:
    """Compile each block separately: all blocks share one graph, so compile time is one block's."""
    for block in model.layers:
        block.compile(dynamic=False)


def apply_fsdp(model: Transformer, mesh: DeviceMesh, bf16: bool) -> None:
    """FSDP2: shard every block, then the root (embedding, final norm, head).

    With `bf16`, parameters are gathered and computed in bf16 while the sharded fp32 copies stay
    the optimizer's master weights, and gradients are reduced in fp32 (Llama 2 trains in bf16).
    """
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for i, block in enumerate(model.layers):
        # The last block's parameters are needed again right away by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(model.layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulation step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
