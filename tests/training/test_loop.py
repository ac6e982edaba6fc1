"""The per-worker training loop in one process: the loss falls, and a resumed run is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from operators.training.checkpoint import LocalCheckpoints
from operators.pretrain.config import grad_accumulation_steps
from operators.pretrain.task import PretrainTask
from operators.training.checkpointer import EXPORT_DIR
from operators.training.loop import train
from operators.training.schedule import lr_at
from operators.training.task import WorkerEnv
from tests.pretrain.token_shards import write_token_shards
from tests.recording_tracker import RecordingTracker
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


def test_training_lowers_the_loss(shards, tmp_path):
    job = PretrainTask(tiny_config(max_steps=20), shards, {"a": 1.0, "b": 2.0}, VOCAB_SIZE)
    history = train(job, LocalCheckpoints(tmp_path), WorkerEnv())
    assert len(history) == 20
    assert history[-1] < history[0] - 1.0


def test_an_interrupted_and_resumed_run_repeats_the_uninterrupted_loss_curve(shards, tmp_path):
    job = PretrainTask(tiny_config(), shards, {"a": 1.0, "b": 2.0}, VOCAB_SIZE)
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
    plain = train(PretrainTask(tiny_config(max_steps=4), shards, {}, VOCAB_SIZE), LocalCheckpoints(tmp_path / "a"), WorkerEnv())
    job = PretrainTask(tiny_config(max_steps=4, activation_checkpointing=True), shards, {}, VOCAB_SIZE)
    assert train(job, LocalCheckpoints(tmp_path / "b"), WorkerEnv()) == plain
    assert (tmp_path / "b" / "step-000004" / EXPORT_DIR / "model.safetensors").is_file()  # wrapper names unwrapped on export


def test_rank_0_logs_step_metrics_at_step_1_and_every_log_every_steps(shards, tmp_path):
    tracker = RecordingTracker()
    config = tiny_config(max_steps=10, log_every=4)
    history = train(PretrainTask(config, shards, {}, VOCAB_SIZE, tracker), LocalCheckpoints(tmp_path), WorkerEnv())
    assert tracker.series("train/loss") == [(1, history[0]), (4, history[3]), (8, history[7]), (10, history[9])]
    steps, lrs = zip(*tracker.series("train/lr"))
    assert steps == (1, 4, 8, 10)
    assert lrs == pytest.approx([lr_at(s - 1, config.peak_lr, config.warmup_steps, config.max_steps) for s in steps])
    assert tracker.series("train/tokens_seen") == [(s, s * config.global_batch_tokens) for s in (1, 4, 8, 10)]
    assert {name for name, _, _ in tracker.metrics} == {
        "train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/tokens_seen"
    }  # no MFU on a CPU: its peak FLOP/s is unknown


def test_other_ranks_log_nothing(shards, tmp_path):
    tracker = RecordingTracker()
    job = PretrainTask(tiny_config(max_steps=2, log_every=1), shards, {}, VOCAB_SIZE, tracker)
    train(job, LocalCheckpoints(tmp_path), WorkerEnv(rank=1, world_size=2))
    assert tracker.metrics == []
