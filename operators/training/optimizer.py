"""AdamW with Llama 2's hyper-parameters (§2.2) and decoupled weight decay on matrices only.

Decayed: every projection matrix (attention, feed-forward, output head).
Not decayed: RMSNorm gains (the paper: "not on norms"; decaying a gain towards 0 fights the
normalisation itself) and, by default, the token embedding: a rare token's row receives a
gradient only when the token occurs, so decay would shrink it towards zero between
occurrences (OLMo 2 §3.2.1 drops embedding decay for this reason). The model has no biases.
"""

from __future__ import annotations

import torch
from torch import nn

from model.llama import RMSNorm


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two AdamW groups, `decay` and `no_decay`, each parameter in exactly one."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, RMSNorm) or (isinstance(module, nn.Embedding) and not decay_embeddings):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids or p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),  # §2.2
    eps: float = 1e-5,  # §2.2
    weight_decay: float = 0.1,  # §2.2
    decay_embeddings: bool = False,
) -> torch.optim.AdamW:
    on_cuda = next(model.parameters()).device.type == "cuda"
    # fused: one kernel per step for all tensors (CUDA only); foreach elsewhere.
    return torch.optim.AdamW(
        param_groups(model, weight_decay, decay_embeddings), lr=lr, betas=betas, eps=eps,
        fused=on_cuda or None, foreach=None if on_cuda else True,
    )
