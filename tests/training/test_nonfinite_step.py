"""A non-finite step stops the run at that step, before its update: the error names the step and the
stage, the model is the one the step before left, and no checkpoint is written after it.

Both ways the guard works run here on CPU: a host check at every step (foreach AdamW, what CPU runs
get) and the device flag that fused AdamW skips on (what CUDA runs get; fused AdamW runs on CPU too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import operators.training.loop as loop
from operators.pretrain.task import PretrainTask
from operators.training.checkpoint import LocalCheckpoints
from operators.training.loop import train
from operators.training.optimizer import build_optimizer
from operators.training.task import Batch, LossOutput, StepLoader, WorkerEnv
from tests.pretrain.token_shards import write_token_shards
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config

BAD_STEP = 6  # tiny_config: checkpoints at 4 and 8 (of 12), log windows end at 1, 4 and 8


class NumberedSteps:
    """A loader whose micro-batches carry their step number (1-based)."""

    def __init__(self, inner: StepLoader):
        self.inner, self.step = inner, 0

    def next_step(self, model: nn.Module) -> list[Batch]:
        self.step += 1
        return [dict(batch, step=torch.tensor(self.step)) for batch in self.inner.next_step(model)]

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


@dataclass(frozen=True)
class OneBadStep(PretrainTask):
    """The tiny pretraining run with one bad batch at `BAD_STEP`: its loss NaN, or (`poison="gradient"`)
    its loss finite and its gradients NaN. The models it builds are kept, so a test sees the trained one."""

    poison: str = "loss"
    models: list[nn.Module] = field(default_factory=list)

    def build_model(self) -> nn.Module:
        self.models.append(super().build_model())
        return self.models[-1]

    def loader(self, env: WorkerEnv) -> NumberedSteps:
        return NumberedSteps(super().loader(env))

    def loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        out = super().loss(model, batch)
        if int(batch["step"]) != BAD_STEP:
            return out
        if self.poison == "loss":
            return LossOutput(out.total * float("nan"))
        weight = next(model.parameters())
        return LossOutput(out.total + torch.sqrt(weight.sum() * 0))  # adds 0; sqrt's slope at 0 is inf: NaN gradients


def fused_adamw(model: nn.Module, *args: Any, **kwargs: Any) -> torch.optim.AdamW:
    """`build_optimizer`'s groups and settings in the fused AdamW that CUDA runs get."""
    groups = build_optimizer(model, *args, **kwargs).param_groups
    return torch.optim.AdamW([{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in groups],
                             fused=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


@pytest.fixture(params=["host check (foreach AdamW)", "device flag (fused AdamW)"])
def guard_path(request, monkeypatch) -> None:
    if "fused" in request.param:
        monkeypatch.setattr(loop, "build_optimizer", fused_adamw)


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_non_finite_step_stops_the_run_naming_the_step_and_the_stage(shards, tmp_path, guard_path, poison):
    task = OneBadStep(tiny_config(), shards, {}, VOCAB_SIZE, stage="pretrain_small", poison=poison)
    with pytest.raises(FloatingPointError, match=rf"^pretrain_small: .* of step {BAD_STEP} are not finite"):
        train(task, LocalCheckpoints(tmp_path), WorkerEnv())


def test_a_non_finite_step_leaves_the_model_and_the_checkpoints_as_the_step_before_left_them(shards, tmp_path,
                                                                                             guard_path):
    before = OneBadStep(tiny_config(), shards, {}, VOCAB_SIZE)
    train(before, LocalCheckpoints(tmp_path / "before"), WorkerEnv(), stop_after_step=BAD_STEP - 1)
    task = OneBadStep(tiny_config(), shards, {}, VOCAB_SIZE)
    with pytest.raises(FloatingPointError):
        train(task, LocalCheckpoints(tmp_path / "run"), WorkerEnv())

    expected, trained = before.models[0].state_dict(), task.models[0].state_dict()
    assert all(torch.equal(trained[name], expected[name]) for name in expected)  # neither the bad step nor a later one applied
    assert [p.name for p in sorted((tmp_path / "run").glob("step-*"))] == ["step-000004"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_optimizer_skips_the_non_finite_step_and_the_next_window_names_it(shards, tmp_path):
    task = OneBadStep(tiny_config(), shards, {}, VOCAB_SIZE, stage="pretrain_small")
    with pytest.raises(FloatingPointError, match=rf"^pretrain_small: .* of step {BAD_STEP} are not finite"):
        train(task, LocalCheckpoints(tmp_path), WorkerEnv(device=torch.device("cuda")))
    assert all(torch.isfinite(p).all() for p in task.models[0].parameters())  # the NaN step was skipped on the GPU
    assert [p.name for p in sorted(tmp_path.glob("step-*"))] == ["step-000004"]
