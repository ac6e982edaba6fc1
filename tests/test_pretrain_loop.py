"""The per-worker training loop in one process: the loss falls, and a resumed run is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from operators.training.checkpoint import LocalCheckpoints
from operators.pretrain.stage import PretrainStageConfig
from operators.training.loop import TrainJob, WorkerEnv, grad_accumulation_steps, train
from tests.test_pretrain_data import write_token_shards


def arithmetic_docs(n_files: int = 2, docs: int = 40, seed: int = 0):
    """Counting sequences (mod 200): easy to learn, so a few steps show a falling loss."""
    gen = torch.Generator().manual_seed(seed)
    files = []
    for f in range(n_files):
        rows = []
        for d in range(docs):
            start, n = (int(torch.randint(0, 200, (1,), generator=gen)), int(torch.randint(5, 80, (1,), generator=gen)))
            rows.append((f"doc-{f}-{d}", "a" if d % 3 else "b", [3 + (start + k) % 200 for k in range(n)]))
        files.append(rows)
    return files


def tiny_config(**overrides) -> PretrainStageConfig:
    fields = dict(
        model_size="tiny", seq_len=32, global_batch_tokens=32 * 8, micro_batch_size=4, max_steps=12,
        warmup_steps=3, checkpoint_every=4, log_every=4, peak_lr=3e-3, num_workers=0, validation_fraction=0.05,
    )
    return PretrainStageConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


def test_training_lowers_the_loss(shards, tmp_path):
    job = TrainJob(tiny_config(max_steps=20), shards, {"a": 1.0, "b": 2.0}, vocab_size=256)
    history = train(job, LocalCheckpoints(tmp_path), WorkerEnv())
    assert len(history) == 20
    assert history[-1] < history[0] - 1.0


def test_an_interrupted_and_resumed_run_repeats_the_uninterrupted_loss_curve(shards, tmp_path):
    job = TrainJob(tiny_config(), shards, {"a": 1.0, "b": 2.0}, vocab_size=256)
    straight = train(job, LocalCheckpoints(tmp_path / "straight"), WorkerEnv())

    store = LocalCheckpoints(tmp_path / "interrupted")
    before = train(job, store, WorkerEnv(), stop_after_step=6)  # "killed" after step 6; last checkpoint: step 4
    assert before == straight[:6]
    torch.manual_seed(1234)  # a fresh process has other RNG state: the checkpoint must restore it
    resumed = train(job, store, WorkerEnv())
    assert resumed == straight  # bit for bit: model, optimizer, schedule, data position, RNG


def test_the_global_batch_must_split_evenly_into_micro_batches():
    assert grad_accumulation_steps(4 * 1024 * 1024, 4096, 1, 256) == 4
    with pytest.raises(ValueError, match="global_batch_tokens"):
        grad_accumulation_steps(1000, 32, 2, 2)


def test_activation_checkpointing_changes_memory_not_the_loss_curve(shards, tmp_path):
    plain = train(TrainJob(tiny_config(max_steps=4), shards, {}, 256), LocalCheckpoints(tmp_path / "a"), WorkerEnv())
    job = TrainJob(tiny_config(max_steps=4, activation_checkpointing=True), shards, {}, 256)
    assert train(job, LocalCheckpoints(tmp_path / "b"), WorkerEnv()) == plain
    assert (tmp_path / "b" / "step-000004" / "hf" / "model.safetensors").is_file()  # wrapper names unwrapped on export
