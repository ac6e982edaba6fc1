"""The pretrain stage on Ray Train: 2 gloo workers with FSDP2 match one process, and publish an HF model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.convert import load_model
from operators.training.checkpoint import LocalCheckpoints
from operators.pretrain.stage import run_pretrain
from operators.training.loop import FAULT_ENV, TrainJob, WorkerEnv, train
from operators.stage_io import StageIO
from tests.test_pretrain_data import write_token_shards
from tests.test_pretrain_loop import arithmetic_docs, tiny_config


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, Path]:
    tokenize = tmp_path_factory.mktemp("tokenize")
    write_token_shards(tokenize, arithmetic_docs())
    summary = {"tokenizer": {"vocab_size": 256}, "mixing_weights": {"a": 1.0, "b": 2.0}}
    (tokenize / "manifest.json").write_text(json.dumps({"summary": summary}))
    tokenizer = tmp_path_factory.mktemp("train_tokenizer")
    (tokenizer / "tokenizer.model").write_bytes(b"stand-in: the stage only copies it")
    return {"tokenize": tokenize, "train_tokenizer": tokenizer}


@pytest.fixture(scope="module")
def alone(upstream, tmp_path_factory) -> list[float]:
    """The loss curve of the same global batches in one process without Ray, FSDP or gloo."""
    shards = sorted((upstream["tokenize"] / "tokens").glob("*.arrow"))
    job = TrainJob(tiny_config(), shards, {"a": 1.0, "b": 2.0}, 256)
    return train(job, LocalCheckpoints(tmp_path_factory.mktemp("alone")), WorkerEnv())


def stage_dir(tmp_path: Path, fingerprint: str, attempt: str = "00000000") -> Path:
    """A temporary output dir named as the runner names them: `.tmp-<fingerprint>-<uuid>`."""
    out = tmp_path / "store" / "pretrain" / f".tmp-{fingerprint}-{attempt}"
    out.mkdir(parents=True)
    return out


@pytest.mark.slow
def test_two_fsdp_workers_train_like_one_process_and_publish_a_hugging_face_model(upstream, alone, tmp_path, ray_local):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = mlflow.MlflowClient().create_run(mlflow.MlflowClient().create_experiment("t")).info.run_id
    config = tiny_config(num_workers=2, micro_batch_size=2)
    out = stage_dir(tmp_path, "0123456789abcdef")
    result = run_pretrain(config, StageIO(out, upstream, tmp_path / "plots", str(mlflow.get_tracking_uri()), run_id))

    history = json.loads((out / "loss_history.json").read_text())
    assert history == pytest.approx(alone, rel=1e-4)

    assert result.counts["in"] == result.counts["out"] + result.counts["rejected"]
    assert result.summary["unit"] == "tokens"
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert (out / "checkpoints" / "step-000012" / ".metadata").is_file()
    assert sorted(p.name for p in (out / "checkpoints" / "step-000012").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (out.parent / ".ray_train" / "pretrain-0123456789abcdef").exists()  # Ray's copy is cleaned up

    model = load_model(out / "model", "hf")
    tokens = torch.arange(3, 35)[None]
    assert torch.isfinite(model(tokens)).all()
    logged = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    assert [m.step for m in logged] == [4, 8, 12]
    assert logged[-1].value == pytest.approx(history[-1])
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_a_stage_killed_mid_run_resumes_from_its_latest_checkpoint_when_run_again(
    upstream, alone, tmp_path, ray_local, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, f"6:{tmp_path / 'failed'}")  # both workers die after step 6 (checkpoint: 4)
    config = tiny_config(num_workers=2, micro_batch_size=2, max_failures=0)
    with pytest.raises(Exception, match="injected fault"):
        run_pretrain(config, StageIO(stage_dir(tmp_path, "fedcba9876543210", "aaaaaaaa"), upstream, tmp_path / "p"))

    # The runner calls the stage again with a new temporary dir under the same fingerprint.
    out = stage_dir(tmp_path, "fedcba9876543210", "bbbbbbbb")
    run_pretrain(config, StageIO(out, upstream, tmp_path / "p"))
    assert json.loads((out / "loss_history.json").read_text()) == pytest.approx(alone, rel=1e-4)


@pytest.mark.slow
def test_failure_config_restarts_a_failed_worker_group_from_the_latest_checkpoint(
    upstream, alone, tmp_path, ray_local, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, f"6:{tmp_path / 'failed'}")
    out = stage_dir(tmp_path, "0011223344556677")
    run_pretrain(tiny_config(num_workers=2, micro_batch_size=2, max_failures=1), StageIO(out, upstream, tmp_path / "p"))
    assert (tmp_path / "failed.0").exists()  # the fault did happen, and the run still finished
    assert json.loads((out / "loss_history.json").read_text()) == pytest.approx(alone, rel=1e-4)
