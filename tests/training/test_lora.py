"""`lora: {...}` trains low-rank adapters (through peft) in the one loop: only they train, the run
starts from the base model exactly, the published model is the adapted one merged into plain
weights, a resumed run is exact, and two FSDP workers compute one worker's gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.convert import load_model
from operators.pretrain.task import PretrainTask
from operators.training.checkpoint import LocalCheckpoints, load_checkpoint, read_model_weights
from operators.training.checkpointer import EXPORT_DIR
from operators.training.loop import prepare_model, train
from operators.training.optimizer import build_optimizer
from operators.training.step import accumulate_gradients
from operators.training.task import WorkerEnv
from tests.pretrain.token_shards import write_token_shards
from tests.training.fsdp_workers import fsdp_gradients
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config

LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["wq", "wv", "w2"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


def task(shards, **changes) -> PretrainTask:
    return PretrainTask(tiny_config(**({"max_steps": 4, "lora": LORA} | changes)), shards, {}, VOCAB_SIZE)


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB_SIZE, (2, 24), generator=torch.Generator().manual_seed(7))


def test_training_starts_from_the_base_model_exactly(shards):
    adapted = prepare_model(task(shards), WorkerEnv())
    with torch.no_grad():
        assert torch.equal(adapted(tokens()), task(shards).build_model()(tokens()))  # B starts at zero


def test_only_the_adapters_train_on_the_chosen_projections(shards, tmp_path):
    job = task(shards)
    model = prepare_model(job, WorkerEnv())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if is_adapter(n)}
    assert {n.split(".")[3] for n in trained} == {"wq", "wv", "w2"}
    train(job, LocalCheckpoints(tmp_path), WorkerEnv())
    restored = prepare_model(job, WorkerEnv())
    load_checkpoint(tmp_path / "step-000004", restored, build_optimizer(restored, 1e-3), 0)
    for name, value in restored.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]) != is_adapter(name), name


def test_the_published_model_is_the_adapted_model_merged(shards, tmp_path):
    job = task(shards)
    train(job, LocalCheckpoints(tmp_path), WorkerEnv())
    adapted = prepare_model(job, WorkerEnv())
    load_checkpoint(tmp_path / "step-000004", adapted, build_optimizer(adapted, 1e-3), 0)
    published = load_model(tmp_path / "step-000004" / EXPORT_DIR, "hf")  # a plain Transformer, plain names
    with torch.no_grad():
        torch.testing.assert_close(published(tokens()), adapted(tokens()), atol=1e-5, rtol=0)
        assert not torch.equal(published(tokens()), job.build_model()(tokens()))
    _, exported = read_model_weights(tmp_path / "step-000004")  # llama2 convert --from checkpoint
    assert exported.keys() == published.state_dict().keys() - {"rope_cos", "rope_sin"}
    assert all(torch.equal(exported[k], published.state_dict()[k]) for k in exported)


def test_an_interrupted_and_resumed_lora_run_repeats_the_uninterrupted_loss_curve(shards, tmp_path):
    job = task(shards, max_steps=12, lora=LORA | {"dropout": 0.1})  # dropout: the RNG state matters too
    straight = train(job, LocalCheckpoints(tmp_path / "straight"), WorkerEnv())
    store = LocalCheckpoints(tmp_path / "interrupted")
    assert train(job, store, WorkerEnv(), stop_after_step=6) == straight[:6]  # last checkpoint: step 4
    torch.manual_seed(1234)
    assert train(job, store, WorkerEnv()) == straight


def test_activation_checkpointing_of_adapted_blocks_changes_memory_not_the_loss_curve(shards, tmp_path):
    plain = train(task(shards, freeze_layers=1), LocalCheckpoints(tmp_path / "a"), WorkerEnv())
    wrapped = task(shards, freeze_layers=1, activation_checkpointing=True)
    assert train(wrapped, LocalCheckpoints(tmp_path / "b"), WorkerEnv()) == plain
    a, b = (load_model(tmp_path / run / "step-000004" / EXPORT_DIR, "hf").state_dict() for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # merged, the wrapper's names gone


def test_two_fsdp_workers_give_the_adapters_one_workers_gradients(shards, tmp_path):
    job = task(shards, freeze_layers=1, micro_batch_size=2, global_batch_tokens=32 * 8)
    step = job.loader(WorkerEnv()).next_step(None)  # four micro-batches: all on one worker, two each on two
    single = prepare_model(job, WorkerEnv())
    accumulate_gradients(job, single, step, WorkerEnv())
    expected = {n: p.grad for n, p in single.named_parameters() if p.grad is not None}
    assert expected.keys() == {n for n, _ in single.named_parameters() if is_adapter(n) and n.startswith("layers.1.")}
    distributed = fsdp_gradients(job, step, 2, tmp_path)  # B starts at 0: A's are 0 on both sides, B's compared
    assert distributed.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(distributed[name], grad, atol=1e-6, rtol=1e-4)
