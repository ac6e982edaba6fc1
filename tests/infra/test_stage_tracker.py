"""A stage's tracker delivers in the background and never waits on the tracking server: when the
server goes away mid-training the training goes on at its own pace, and the step metrics reach the
run when the server is back, or are handed back with their steps when it is not.

The training loop runs in this process (as a Ray Train worker runs it) against a real `mlflow
server`, which is stopped after step 4 (in the first of those tests, started again on the same
address and store) or hangs; the others log to a SQLite store.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from infra.tracking import MlflowTracker
from operators.pretrain.task import PretrainTask
from operators.training.checkpoint import LocalCheckpoints
from operators.training.loop import WorkerEnv, train
from tests.infra.local_mlflow_server import mlflow_server
from tests.infra.local_ray_head import free_port
from tests.pretrain.token_shards import write_token_shards
from tests.training.tiny_run import VOCAB_SIZE, arithmetic_docs, tiny_config

STEPS = 12
DOWN_AFTER = 4  # a checkpoint step: training resumes there with the server gone


@pytest.fixture
def sqlite_run(tmp_path: Path) -> tuple[MlflowClient, MlflowTracker]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tracker", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, MlflowTracker(uri, client.create_run(experiment).info.run_id)


def test_what_a_stage_logs_reaches_its_run_with_its_steps(sqlite_run) -> None:
    client, tracker = sqlite_run
    for step in (1, 2, 3):
        tracker.log_metrics({"train/loss": 1 / step}, step)
    tracker.log_params({"peak_lr": 0.1})
    tracker.set_tags({"llama2.kl_limit_exceeded": "no"})
    tracker.log_text("step 3: done", "notes/progress.txt")
    assert not tracker.hand_back(30)
    run = client.get_run(tracker.run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train/loss")] == [
        (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert run.data.params["peak_lr"] == "0.1" and run.data.tags["llama2.kl_limit_exceeded"] == "no"
    assert Path(client.download_artifacts(tracker.run_id, "notes/progress.txt")).read_text() == "step 3: done"


def test_a_value_the_server_refuses_is_named_and_not_sent_again(sqlite_run) -> None:
    _, tracker = sqlite_run
    tracker.log_params({"peak_lr": 0.1})
    assert not tracker.hand_back(30)
    tracker.log_params({"peak_lr": 0.2})  # MLflow keeps a run's params as first logged
    left = tracker.hand_back(30)
    assert not left.params and len(left.lost) == 1 and left.lost[0].startswith("1 param (refused: MlflowException")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), arithmetic_docs())


def tracked_task(uri: str, shards: list[Path]) -> PretrainTask:
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    config = tiny_config(max_steps=STEPS, log_every=1, checkpoint_every=DOWN_AFTER)
    return PretrainTask(config, shards, {"a": 1.0, "b": 2.0}, VOCAB_SIZE, MlflowTracker(uri, run_id))


def train_without_the_server(task: PretrainTask, checkpoints: LocalCheckpoints) -> tuple[list[float], float]:
    started = time.monotonic()
    history = train(task, checkpoints, WorkerEnv())
    return history, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_goes_on_without_the_server_and_its_metrics_arrive_when_it_is_back(tmp_path: Path, shards) -> None:
    port, checkpoints = free_port(), LocalCheckpoints(tmp_path / "checkpoints")
    with mlflow_server(tmp_path / "mlflow", port=port) as server:
        task = tracked_task(server.uri, shards)
        train(task, checkpoints, WorkerEnv(), stop_after_step=DOWN_AFTER)
    history, seconds = train_without_the_server(task, checkpoints)
    assert len(history) == STEPS and seconds < 60

    with mlflow_server(tmp_path / "mlflow", port=port) as server:
        assert not task.tracker.hand_back(60)
        logged = MlflowClient(server.uri).get_metric_history(task.tracker.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in logged) == [(s, pytest.approx(history[s - 1]))
                                                         for s in range(1, STEPS + 1)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_what_the_server_never_took_is_handed_back_with_its_steps(tmp_path: Path, shards) -> None:
    checkpoints = LocalCheckpoints(tmp_path / "checkpoints")
    with mlflow_server(tmp_path / "mlflow") as server:
        task = tracked_task(server.uri, shards)
    history, seconds = train_without_the_server(task, checkpoints)
    assert len(history) == STEPS and seconds < 60

    started = time.monotonic()
    backlog = task.tracker.hand_back(10)
    assert time.monotonic() - started < 10
    losses = sorted((step, value) for name, value, _, step in backlog.metrics if name == "train/loss")
    assert losses == [(s, pytest.approx(history[s - 1])) for s in range(1, STEPS + 1)]
    assert "train/loss" in backlog.describe()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_server_that_hangs_holds_training_up_for_seconds_at_most(tmp_path: Path, shards) -> None:
    checkpoints = LocalCheckpoints(tmp_path / "checkpoints")
    with mlflow_server(tmp_path / "mlflow") as server:
        task = tracked_task(server.uri, shards)
        os.killpg(server.pid, signal.SIGSTOP)  # connections are accepted, never answered
        try:
            history, seconds = train_without_the_server(task, checkpoints)
        finally:
            os.killpg(server.pid, signal.SIGCONT)
    assert len(history) == STEPS and seconds < 30
    assert task.tracker.hand_back(0).metrics  # nothing got through
