"""AdamW with Llama 2's hyper-parameters (§2.2) and decoupled weight decay on matrices only.

Decayed: every projection matrix (attention, feed-forward, output head).
Not decayed: RMSNorm gains (the paper: "not on norms"; decaying a gain towards 0 fights the
normalisation itself) and, by default, the token embedding: a rare token's row receives a
gradient only when the token occurs, so decay would shrink it towards zero between
occurrences (OLMo 2 §3.2.1 drops embedding decay for this reason). The model has no biases.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from model.llama import RMSNorm


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False,
                 lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """AdamW groups `decay` and `no_decay`, each parameter in exactly one; with `lr_scales`
    (parameter-name prefix -> multiplier of the learning rate) each is split further by prefix,
    its `lr_scale` recorded, and groups left empty dropped."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, RMSNorm) or (isinstance(module, nn.Embedding) and not decay_embeddings):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    scales = dict(lr_scales or {})
    groups = {(kind, prefix): [] for kind in ("decay", "no_decay") for prefix in ["", *scales]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "no_decay" if id(p) in no_decay_ids or p.ndim < 2 else "decay"
            prefix = next((prefix for prefix in scales if name.startswith(prefix)), "")
            groups[kind, prefix].append(p)
    return [
        {"params": params, "weight_decay": weight_decay if kind == "decay" else 0.0,
         "name": kind + (f"/{prefix}" if prefix else ""), "lr_scale": scales.get(prefix, 1.0)}
        for (kind, prefix), params in groups.items() if params or not scales
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),  # §2.2
    eps: float = 1e-5,  # §2.2
    weight_decay: float = 0.1,  # §2.2
    decay_embeddings: bool = False,
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """`lr_scales` gives some parameters a multiple of `lr` (a schedule then scales every group alike)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    groups = param_groups(model, weight_decay, decay_embeddings, lr_scales)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    # fused: one kernel per step for all tensors (CUDA only); foreach elsewhere.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=on_cuda or None,
                             foreach=None if on_cuda else True)
