"""Stopping a run at its first non-finite step, before that step changes the model.

A NaN or inf in a step's loss (or a reported extra) or gradients would be applied by AdamW and
carried into every later step and checkpoint. The guard looks at both after clipping, before the
optimizer steps, with every rank agreeing (one scalar summed over ranks):

- an optimizer that can skip a step on the device (fused AdamW reads `found_inf`, the tensor
  GradScaler hands it) gets a sticky flag instead of a host sync per step: the kernel skips the
  bad step and every later one, and the loop reads the flag once per metrics window, before it
  logs or checkpoints anything;
- elsewhere (foreach AdamW on CPU, where reading a value costs nothing) the guard reads the flag
  at every step and raises before the update.

Either way no update from a non-finite step is applied and no checkpoint is written after one:
the latest checkpoint is the last good state.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from operators.training.collectives import global_sum


class NonFiniteStepError(FloatingPointError):
    """A step's loss or gradients were NaN or inf; the step was not applied."""

    def __init__(self, stage: str, step: int):
        super().__init__(
            f"{stage}: the loss or gradients of step {step} are not finite (NaN or inf); step {step} was not "
            f"applied and no checkpoint is written after it: the latest checkpoint is the last good one. "
            f"Lower peak_lr or check the data of step {step}."
        )
        self.stage, self.step = stage, step


class NonFiniteGuard:
    """Checks each step before its update; `stage` names the run in the error."""

    def __init__(self, optimizer: Optimizer, stage: str, device: torch.device):
        self.stage = stage
        self.on_device = bool(optimizer.defaults.get("fused"))
        if self.on_device:
            self.skipping = torch.zeros((), device=device)  # 1.0 from the first bad step on: AdamW skips
            self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
            optimizer.found_inf = self.skipping

    def check(self, step: int, values: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Before step `step`'s update: its logged values (this rank's) and global gradient norm."""
        finite = torch.isfinite(values).all() & torch.isfinite(grad_norm)
        bad = global_sum((~finite).float()) > 0
        if not self.on_device:
            if bad.item():
                raise NonFiniteStepError(self.stage, step)
            return
        self.first_bad.copy_(torch.where(self.skipping > 0, self.first_bad, bad.long() * step))
        self.skipping.copy_(torch.maximum(self.skipping, bad.float()))

    def raise_if_tripped(self) -> None:
        """At the end of a metrics window, before anything is logged or checkpointed: raise if a step was not finite."""
        if self.on_device and (step := int(self.first_bad.item())):
            raise NonFiniteStepError(self.stage, step)
