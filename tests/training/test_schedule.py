"""Llama 2's LR schedule (§2.2): linear warmup to the peak, cosine to 10% of it."""

from __future__ import annotations

import pytest
import torch

from operators.training.schedule import build_lr_scheduler, lr_at

PEAK, WARMUP, TOTAL = 3e-4, 2000, 10_000


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, PEAK / WARMUP),  # the first step already moves
        (999, PEAK / 2),
        (WARMUP - 1, PEAK),  # warmup ends at the peak
        (WARMUP, PEAK),  # the cosine starts there
        ((WARMUP + TOTAL) // 2, 0.55 * PEAK),  # half-way down the cosine: (1 + 0.1) / 2
        (TOTAL, 0.1 * PEAK),  # floor: 10% of the peak
        (3 * TOTAL, 0.1 * PEAK),  # and it stays there
    ],
)
def test_lr_at_key_steps(step, expected):
    assert lr_at(step, PEAK, WARMUP, TOTAL) == pytest.approx(expected, rel=1e-9)


def test_the_cosine_only_decreases():
    lrs = [lr_at(s, PEAK, WARMUP, TOTAL) for s in range(WARMUP, TOTAL + 1, 50)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_the_scheduler_drives_the_optimizer_with_the_same_values():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = build_lr_scheduler(opt, PEAK, warmup_steps=4, decay_steps=10)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, PEAK, 4, 10) for s in range(12)])
