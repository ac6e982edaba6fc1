"""The pretrain stage's config: the paper's recipe by default, typos refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from operators.pretrain.stage import PretrainStageConfig


def test_defaults_are_llama_2s_recipe():
    c = PretrainStageConfig()
    assert (c.peak_lr, c.warmup_steps, c.min_lr_ratio) == (3e-4, 2000, 0.1)
    assert (c.adam_beta1, c.adam_beta2, c.adam_eps, c.weight_decay, c.grad_clip) == (0.9, 0.95, 1e-5, 0.1, 1.0)
    assert (c.seq_len, c.global_batch_tokens) == (4096, 4 * 1024 * 1024)
    assert c.max_steps * c.global_batch_tokens == pytest.approx(2.0e12, rel=1e-3)


@pytest.mark.parametrize("size", ["34B", "70B"])
def test_the_large_models_default_to_half_the_peak_lr(size):
    assert PretrainStageConfig(model_size=size).peak_lr == 1.5e-4
    assert PretrainStageConfig(model_size=size, peak_lr=1e-4).peak_lr == 1e-4  # an explicit value wins


def test_an_unknown_field_is_refused_by_name():
    with pytest.raises(ValidationError, match="warmup_step"):
        PretrainStageConfig(warmup_step=10)
