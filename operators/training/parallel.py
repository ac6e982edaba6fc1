"""Parallelism applied from outside, torchtitan-style, to every `model.llama.Transformer` a model
holds (one for pretraining and SFT; a policy and a critic for PPO).

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


_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.",)  # activation checkpointing's wrapper, not the model's names


def model_name(name: str) -> str:
    """A parameter's name as the model has it, without the wrappers applied here (state dicts of a
    wrapped model carry them)."""
    for wrapper in _WRAPPER_PREFIXES:
        name = name.replace(wrapper, "")
    return name


def transformers_in(model: nn.Module) -> list[Transformer]:
    return [m for m in model.modules() if isinstance(m, Transformer)]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of keeping them (memory for ~33% FLOPs)."""
    for transformer in transformers_in(model):
        for i, block in enumerate(transformer.layers):
            transformer.layers[i] = checkpoint_wrapper(block)


def apply_compile(model: nn.Module) -> None:
    """Compile each block separately: all blocks share one graph, so compile time is one block's."""
    for transformer in transformers_in(model):
        for block in transformer.layers:
            block.compile(dynamic=False)


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, bf16: bool) -> None:
    """FSDP2: shard every block, then each transformer's root (embedding, final norm, head), then the model.

    With `bf16`, parameters are gathered and computed in bf16 while the sharded fp32 copies stay
    the optimizer's master weights, and gradients are reduced in fp32 (Llama 2 trains in bf16).
    """
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for transformer in transformers_in(model):
        for i, block in enumerate(transformer.layers):
            # The last block's parameters are needed again right away by backward: keep them gathered.
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(transformer.layers) - 1)
        if transformer is not model:
            fully_shard(transformer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulation step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
