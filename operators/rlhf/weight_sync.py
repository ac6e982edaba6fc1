"""The PPO policy's weights, trainer -> rollout engine, once per iteration: only what trains, a block at a time.

Every trainer rank walks the policy's modules in the same order (the transformer blocks, then the
embedding, the final norm and the head). A module with a trained parameter is gathered unsharded
(under FSDP an all-gather every rank takes part in), its LoRA adapters merged, named and laid out
as Hugging Face names it (what a serving engine such as vLLM loads), cast to the engine's dtype, and
rank 0 puts it in Ray's object store and hands it to the engine while the next module is gathered.
So no rank holds more than one module unsharded, the frozen blocks and the critic are never sent,
and the actors copy each part into their policy in place.
"""

from __future__ import annotations

from collections.abc import Iterator

import ray
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from model.args import ModelArgs
from model.hf_format import to_hf_state_dict
from model.llama import Transformer
from operators.rollout.engine import RolloutEngine
from operators.training.config import LoRAConfig
from operators.training.lora import merge_adapters
from operators.training.parallel import model_name

def trained_parts(policy: Transformer, lora: LoRAConfig | None, args: ModelArgs,
                  dtype: torch.dtype, keep: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Each trained module of `policy` as a Hugging Face-named state dict on CPU in `dtype` (a collective
    under FSDP: every rank iterates it to the end). `keep=False` (the ranks that send nothing) takes
    part in the gathers only: no merge, copy to CPU or renaming, and empty parts."""
    for prefix, module in _modules(policy):
        if not any(p.requires_grad for p in module.parameters()):
            continue
        state = {prefix + model_name(name): _full(p) for name, p in module.named_parameters()}
        if not keep:
            yield {}
            continue
        merged = merge_adapters(state, lora.scaling) if lora is not None else state
        yield to_hf_state_dict({k: v.detach().to("cpu", dtype) for k, v in merged.items()}, args)


def sync_policy(policy: nn.Module, lora: LoRAConfig | None, args: ModelArgs, engine: RolloutEngine | None) -> int:
    """Send what trains of `policy` to `engine` (rank 0; None on the other ranks, which gather with it);
    return the bytes sent."""
    if engine is None:
        for _ in trained_parts(policy, lora, args, torch.float32, keep=False):
            pass
        return 0
    parts = trained_parts(policy, lora, args, engine.weights_dtype)
    sent = 0

    def put() -> Iterator[ray.ObjectRef]:
        nonlocal sent
        for part in parts:
            sent += sum(t.numel() * t.element_size() for t in part.values())
            yield ray.put(part)

    engine.load_policy(put())
    return sent


def _modules(policy: Transformer) -> list[tuple[str, nn.Module]]:
    head = [] if policy.tied else [("output.", policy.output)]  # a tied head is the embedding, sent once
    return ([(f"layers.{i}.", block) for i, block in enumerate(policy.layers)]
            + [("tok_embeddings.", policy.tok_embeddings), ("norm.", policy.norm), *head])


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
