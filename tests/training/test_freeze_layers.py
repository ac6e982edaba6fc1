"""`freeze_layers: N` freezes the token embedding and the lowest N blocks: they get no gradient, no
optimizer state and keep their weights; backward stops at block N; the blocks above train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from operators.pretrain.task import PretrainTask
from operators.training.checkpoint import LocalCheckpoints, read_model_weights
from operators.training.loop import prepare_model, train
from operators.training.optimizer import build_optimizer
from operators.training.step import accumulate_gradients
from operators.training.task import WorkerEnv
from operators.training.trainable import TrainableParametersError
from tests.pretrain.token_shards import write_token_shards
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config

FROZEN = ("tok_embeddings.", "layers.0.")  # the tiny model has two blocks; freeze_layers=1 freezes the lower


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


def task(shards, **changes) -> PretrainTask:
    return PretrainTask(tiny_config(**({"max_steps": 4, "freeze_layers": 1} | changes)), shards, {}, VOCAB_SIZE)


def is_frozen(name: str) -> bool:
    return name.startswith(FROZEN)


def test_frozen_layers_keep_their_weights_and_the_layers_above_them_train(shards, tmp_path):
    job = task(shards)
    before = job.build_model().state_dict()
    train(job, LocalCheckpoints(tmp_path), WorkerEnv())
    _, after = read_model_weights(tmp_path / "step-000004")
    for name, value in after.items():
        if is_frozen(name):
            assert torch.equal(value, before[name]), name
        else:
            assert not torch.equal(value, before[name]), name


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(shards):
    job, env = task(shards), WorkerEnv()
    model = prepare_model(job, env)
    accumulate_gradients(job, model, job.loader(env).next_step(model), env)
    optimizer = build_optimizer(model, job.settings.peak_lr)
    optimizer.step()
    parameters = dict(model.named_parameters())
    assert {n for n, p in parameters.items() if p.grad is not None} == {n for n in parameters if not is_frozen(n)}
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {n for n, p in parameters.items() if id(p) in optimized} == {n for n in parameters if not is_frozen(n)}
    assert {n for n, p in parameters.items() if p in optimizer.state} == {n for n in parameters if not is_frozen(n)}


def graph_leaves(loss: torch.Tensor) -> tuple[set[int], int]:
    """The parameters backward reaches from `loss` (by id), and the number of nodes in its graph."""
    leaves, seen, todo = set(), set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a parameter's gradient
            leaves.add(id(node.variable))
        todo.extend(next_node for next_node, _ in node.next_functions)
    return leaves, len(seen)


def test_backward_stops_at_the_first_trained_block(shards):
    """Structural, not timed: the autograd graph reaches no frozen parameter, and block 0's output
    needs no gradient, so backward does no work below block 1."""
    outputs = []
    full, frozen = (prepare_model(task(shards, freeze_layers=n), WorkerEnv()) for n in (0, 1))
    frozen.layers[0].register_forward_hook(lambda module, args, out: outputs.append(out))
    batch = task(shards).loader(WorkerEnv()).next_step(frozen)[0]
    (full_leaves, full_nodes), (frozen_leaves, frozen_nodes) = (graph_leaves(task(shards).loss(m, batch).total)
                                                                for m in (full, frozen))
    assert frozen_leaves == {id(p) for n, p in frozen.named_parameters() if not is_frozen(n)}
    assert full_leaves == {id(p) for p in full.parameters()}
    assert not outputs[0].requires_grad
    assert frozen_nodes < full_nodes


def test_freezing_more_blocks_than_the_model_has_is_refused_naming_the_field(shards, tmp_path):
    with pytest.raises(TrainableParametersError, match="freeze_layers=3, but the model has 2 blocks"):
        train(task(shards, freeze_layers=3), LocalCheckpoints(tmp_path), WorkerEnv())
