"""The pretrain stage's config: the paper's recipe by default, typos refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from operators.pretrain.config import PretrainStageConfig


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


def test_an_unknown_model_size_is_refused_with_the_known_ones():
    with pytest.raises(ValidationError, match=r"model_size[\s\S]*'7B'[\s\S]*'tiny'"):
        PretrainStageConfig(model_size="huge")


def test_a_global_batch_that_does_not_split_across_workers_and_micro_batches_is_refused():
    # 4096 x 2 x 3 = 24576 tokens per micro-step across the workers: 4M is not a multiple of it.
    with pytest.raises(ValidationError, match=r"global_batch_tokens=4194304 .* 4096 x 2 x 3 = 24576"):
        PretrainStageConfig(micro_batch_size=2, num_workers=3)
    assert PretrainStageConfig(micro_batch_size=2, num_workers=4).global_batch_tokens == 4 * 1024 * 1024


def test_model_overrides_of_fields_the_model_lacks_are_refused_by_name():
    with pytest.raises(ValidationError, match=r"model_overrides has unknown fields \['n_layer'\]"):
        PretrainStageConfig(model_size="tiny", model_overrides={"n_layer": 2})


def test_model_overrides_that_make_no_model_are_refused():
    with pytest.raises(ValidationError, match="n_kv_heads"):
        PretrainStageConfig(model_size="tiny", model_overrides={"n_kv_heads": 3})  # 4 heads do not group by 3


@pytest.mark.parametrize(("fields", "resources"), [
    ({}, {"CPU": 1.0}),
    ({"num_workers": 0}, {"CPU": 1.0}),  # the driver process trains
    ({"num_workers": 4}, {"CPU": 4.0}),
    ({"num_workers": 8, "use_gpu": True}, {"CPU": 8.0, "GPU": 8.0}),
])
def test_required_resources_are_one_cpu_per_worker_and_a_gpu_each_with_use_gpu(fields, resources):
    assert PretrainStageConfig(**fields).required_resources() == resources
