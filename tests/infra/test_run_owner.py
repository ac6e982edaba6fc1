"""Runs left RUNNING by a process that is gone are ended by the next run, as KILLED and saying so;
runs whose owner may still be working are left alone.

The end-to-end case kills a real `llama2 run` with SIGKILL while it trains; the others give runs
the owner tags of real processes (this one, one that has exited) in a SQLite store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from infra.run_owner import (TAG_OWNER_HOST, TAG_OWNER_PID, TAG_OWNER_PID_SPACE, TAG_OWNER_STARTED,
                             end_runs_of_gone_owners, owner_tags)
from infra.settings import RuntimeSettings, resolve_runtime
from pipelines.dag import Selection
from pipelines.runner import run_pipeline
from tests.infra.train_pipeline import TrainPipelineConfig, build_train, config_file
from tests.infra.training_process import start_training, wait_for_step


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    yield client, client.create_experiment("owners")
    mlflow.set_tracking_uri(None)


def running_run(client: MlflowClient, experiment: str, **owner: str) -> str:
    return client.create_run(experiment, tags={**owner_tags(), **owner, "mlflow.note.content": "**x**: y — running"}
                             ).info.run_id


def exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_run_whose_owner_process_has_exited_is_ended_killed(store) -> None:
    client, experiment = store
    orphan = running_run(client, experiment, **{TAG_OWNER_PID: str(exited_pid())})
    assert end_runs_of_gone_owners(experiment) == [orphan]
    run = client.get_run(orphan)
    assert run.info.status == "KILLED" and run.data.tags["llama2.owner_gone"] == "true"
    assert run.data.tags["mlflow.note.content"].startswith("**x**: y — KILLED: its process (pid ")


def test_a_run_whose_pid_now_belongs_to_another_process_is_ended(store) -> None:
    client, experiment = store
    reused = running_run(client, experiment, **{TAG_OWNER_PID: str(os.getpid()), TAG_OWNER_STARTED: "1000000.00"})
    assert end_runs_of_gone_owners(experiment) == [reused]


def test_runs_of_a_live_owner_or_of_one_this_process_cannot_see_are_left_running(store) -> None:
    client, experiment = store
    gone = str(exited_pid())
    mine = running_run(client, experiment)
    other_host = running_run(client, experiment, **{TAG_OWNER_HOST: f"not-{socket.gethostname()}", TAG_OWNER_PID: gone})
    other_container = running_run(client, experiment, **{TAG_OWNER_PID_SPACE: "pid:[1]", TAG_OWNER_PID: gone})
    assert end_runs_of_gone_owners(experiment) == []
    assert {client.get_run(r).info.status for r in (mine, other_host, other_container)} == {"RUNNING"}


@pytest.mark.slow
def test_the_runs_of_a_killed_llama2_run_are_ended_killed_by_the_next_run(tmp_path: Path, monkeypatch) -> None:
    config = config_file(tmp_path / "tiny.yaml", num_workers=1, max_steps=1000, checkpoint_every=1000, log_every=5)
    with start_training(tmp_path, config) as proc:
        wait_for_step(proc, 5)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        proc.wait(timeout=30)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    killed = {run.info.run_id: run for run in client.search_runs(["1"])}
    assert {run.info.status for run in killed.values()} == {"RUNNING", "FINISHED"}  # the tokens stage had finished

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = TrainPipelineConfig(runtime=RuntimeSettings(store=str(tmp_path / "artifacts"), tracking_uri=uri))
    run_pipeline(build_train(settings), resolve_runtime(settings.runtime), Selection.ONLY, "tokens")  # a cache hit
    mlflow.set_tracking_uri(None)

    for run_id, before in killed.items():
        after = client.get_run(run_id)
        if before.info.status == "FINISHED":
            assert after.info.status == "FINISHED" and "llama2.owner_gone" not in after.data.tags
            continue
        assert after.data.tags[TAG_OWNER_PID] == str(proc.pid)
        assert after.info.status == "KILLED" and after.data.tags["llama2.owner_gone"] == "true"
        assert f"KILLED: its process (pid {proc.pid} on {socket.gethostname()}) was gone" in after.data.tags[
            "mlflow.note.content"]
