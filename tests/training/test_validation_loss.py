"""The loop's periodic validation loss: held-out windows only, every eval_every steps, the same on every rank."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.convert import load_model
from operators.formats.tokens import TokenCorpus
from operators.pretrain.task import PretrainTask
from operators.training.checkpoint import LocalCheckpoints
from operators.training.checkpointer import EXPORT_DIR
from operators.training.loop import train
from operators.training.task import WorkerEnv
from tests.pretrain.token_shards import write_token_shards
from tests.recording_tracker import RecordingTracker
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


def held_out_config(**overrides):
    return tiny_config(**({"validation_fraction": 0.25, "eval_every": 4, "eval_batches": 2} | overrides))


def test_validation_loss_is_logged_every_eval_every_steps_and_falls(shards, tmp_path):
    tracker = RecordingTracker()
    train(PretrainTask(held_out_config(max_steps=12), shards, {}, VOCAB_SIZE, tracker), LocalCheckpoints(tmp_path),
          WorkerEnv())
    curve = tracker.series("val/loss")
    assert [step for step, _ in curve] == [4, 8, 12]
    assert all(math.isfinite(value) for _, value in curve) and curve[-1][1] < curve[0][1]


def test_the_last_validation_loss_is_the_exported_models_loss_on_the_held_out_windows(shards, tmp_path):
    config = held_out_config(max_steps=8)
    tracker = RecordingTracker()
    task = PretrainTask(config, shards, {}, VOCAB_SIZE, tracker)
    train(task, LocalCheckpoints(tmp_path), WorkerEnv())
    model = load_model(tmp_path / "step-000008" / EXPORT_DIR, "hf")
    held_out = TokenCorpus.open(shards, config.seed, config.validation_fraction).validation
    windows = torch.stack([torch.from_numpy(held_out.window(w, config.seq_len).astype("int64"))
                           for w in range(config.eval_batches * config.micro_batch_size)])
    with torch.no_grad():
        logits = model(windows[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten()).item()
    assert tracker.series("val/loss")[-1] == (8, pytest.approx(expected, rel=1e-4))


def test_ranks_score_disjoint_held_out_windows_in_equal_numbers(shards):
    task = PretrainTask(held_out_config(eval_batches=3), shards, {}, VOCAB_SIZE)
    rank0, rank1 = (task.validation_batches(WorkerEnv(rank=r, world_size=2)) for r in (0, 1))
    assert len(rank0) == len(rank1) > 0
    seen0 = {tuple(row.tolist()) for b in rank0 for row in b["tokens"]}
    seen1 = {tuple(row.tolist()) for b in rank1 for row in b["tokens"]}
    assert not seen0 & seen1


def test_no_validation_loss_when_eval_every_is_zero(shards, tmp_path):
    tracker = RecordingTracker()
    train(PretrainTask(held_out_config(max_steps=4, eval_every=0), shards, {}, VOCAB_SIZE, tracker),
          LocalCheckpoints(tmp_path), WorkerEnv())
    assert tracker.series("train/loss") and not tracker.series("val/loss")
