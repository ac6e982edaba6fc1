"""Fine-tuning from a checkpoint with several workers, in torchtitan's order: the model is built on the
meta device (no memory), FSDP shards it, each worker allocates its shard only and fills it from the
checkpoint one tensor at a time. A worker's host memory then peaks near its shard plus the largest
tensor, where building the whole model first needs all of it on every worker (a 70B model does not
fit one host). One worker, or LoRA adapters (initialized from the seed on the built model), keep the
build-then-shard path: a single worker holds the whole model anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from model.checkpoint import CheckpointError
from model.hf_tensors import HfTensors
from operators.training.parallel import model_name, transformers_in

@dataclass(frozen=True)
class StartingWeights:
    """What a fine-tuning task starts from: its model's structure and the checkpoints its tensors come
    from, by state-dict prefix ("" for a single model; "policy." and "critic." for PPO's two)."""

    skeleton: Callable[[], nn.Module]  # builds the model without weights (called on the meta device)
    parts: Mapping[str, HfTensors]

    def tensor(self, name: str) -> torch.Tensor:
        prefix = max((p for p in self.parts if name.startswith(p)), key=len, default=None)
        if prefix is None:
            raise CheckpointError(f"no checkpoint holds {name} (the model's parts: {sorted(self.parts)})")
        return self.parts[prefix].tensor(name.removeprefix(prefix))


def build_on_meta(starting: StartingWeights) -> nn.Module:
    with torch.device("meta"):
        return starting.skeleton()


def load_shards(model: nn.Module, starting: StartingWeights, device: torch.device) -> None:
    """Allocate this worker's shard of the (sharded, meta) model on `device` and copy the checkpoints'
    rows for it into place, tensor by tensor; then recompute the rotary tables."""
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            full = starting.tensor(model_name(name))
            if tuple(full.shape) != tuple(value.shape):
                raise CheckpointError(f"the checkpoint's tensor for {name} has shape {tuple(full.shape)}, "
                                      f"the model needs {tuple(value.shape)}")
            full = full.to(device=device, dtype=value.dtype)
            if isinstance(value, DTensor):  # this rank's rows only, cut here: no collective
                value.to_local().copy_(distribute_tensor(full, value.device_mesh, value.placements,
                                                         src_data_rank=None).to_local())
            else:
                value.copy_(full)
    for transformer in transformers_in(model):
        transformer.reset_rope()
