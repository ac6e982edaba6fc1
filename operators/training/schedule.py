"""Learning-rate schedule of Llama 2 (§2.2): linear warmup, then cosine decay to 10% of the peak.

    lr
    peak ┤    ╭──╮_
         │   ╱     ╲__
         │  ╱         ╲___
    0.1p ┤ ╱              ╲______________   (held at the floor after `decay_steps`)
         └─┴───────────────┴──────────── step
           warmup        decay_steps
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, peak_lr: float, warmup_steps: int, decay_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Warmup reaches the peak at step `warmup_steps - 1` (step 0 already takes a small step, not a
    wasted one at lr 0; no warmup starts at the peak); the cosine then runs from the peak at
    `warmup_steps` to `min_lr_ratio * peak` at `decay_steps` and stays there.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    floor = min_lr_ratio * peak_lr
    if step >= decay_steps:
        return floor
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: Optimizer, peak_lr: float, warmup_steps: int, decay_steps: int, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """A LambdaLR over `lr_at`; the optimizer's groups must be built with lr=peak_lr (times their own
    scale, where a group trains faster or slower than the rest).

    Its `state_dict()` (step counter only, the lambda is rebuilt from config) is checkpointed.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(
        optimizer, lambda step: lr_at(step, peak_lr, warmup_steps, decay_steps, min_lr_ratio) / peak_lr
    )
