"""The reward model's binary ranking loss with a rating margin (Llama 2 §3.2.2, eq. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """-log σ(r(x, y_c) − r(x, y_r) − m(r)) per pair: the chosen response must outscore the other by the margin."""
    return -F.logsigmoid(chosen - rejected - margin)
