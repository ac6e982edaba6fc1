"""AdamW groups: weight decay on projection matrices, never on RMSNorm gains; embeddings by choice."""

from __future__ import annotations

import pytest
import torch

from model.args import get_config
from model.llama import Transformer
from operators.training.optimizer import build_optimizer, param_groups


@pytest.fixture
def model() -> Transformer:
    return Transformer(get_config("tiny"))


def _names(model, group) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_norms_and_embeddings_are_not_decayed_and_matrices_are(model):
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _names(model, no_decay) == {"tok_embeddings.weight", "norm.weight"} | {
        f"layers.{i}.{n}.weight" for i in range(2) for n in ("attention_norm", "ffn_norm")
    }
    assert "output.weight" in _names(model, decay)
    assert "layers.0.attention.wq.weight" in _names(model, decay)
    assert "layers.1.feed_forward.w2.weight" in _names(model, decay)


def test_every_parameter_is_in_exactly_one_group(model):
    groups = param_groups(model, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_embeddings_can_be_decayed_on_request(model):
    decay, _ = param_groups(model, weight_decay=0.1, decay_embeddings=True)
    assert "tok_embeddings.weight" in _names(model, decay)


def test_adamw_uses_the_papers_hyper_parameters(model):
    opt = build_optimizer(model, lr=3e-4)
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert opt.defaults["eps"] == 1e-5
    assert isinstance(opt, torch.optim.AdamW)


def test_a_name_prefix_can_train_at_a_multiple_of_the_learning_rate_through_the_schedule(model):
    from operators.training.schedule import build_lr_scheduler

    opt = build_optimizer(model, lr=1e-4, lr_scales={"layers.1.": 10.0})
    by_name = {name: group["lr"] for group in opt.param_groups for name in _names(model, group)}
    assert by_name["layers.1.attention.wq.weight"] == pytest.approx(1e-3)
    assert by_name["layers.1.ffn_norm.weight"] == pytest.approx(1e-3)
    assert by_name["layers.0.attention.wq.weight"] == by_name["output.weight"] == pytest.approx(1e-4)
    assert len(by_name) == len(list(model.parameters()))
    scheduler = build_lr_scheduler(opt, 1e-4, warmup_steps=2, decay_steps=10)
    assert sorted({round(lr, 12) for lr in scheduler.get_last_lr()}) == [5e-5, 5e-4]
