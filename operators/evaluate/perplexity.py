"""Perplexity on the held-out documents that pretraining never saw (the split its seed fixed)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F


@torch.inference_mode()
def perplexity(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """exp(mean next-token NLL) over every target token of `batches`."""
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    for inputs, targets in batches:
        logits = model(inputs.to(device)).float()
        nll += F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="sum").item()
        tokens += targets.numel()
    if tokens == 0:
        return {"tokens": 0}
    return {"loss": nll / tokens, "perplexity": math.exp(nll / tokens), "tokens": tokens}
