"""A tracking server that is down: fail fast at the start, repair the lineage after a mid-run loss.

Uses the toy pipeline of tests/pipelines/test_runner.py, so the faults are tested without the data
operators, against a real `mlflow server` on loopback.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from infra.lineage import lineage
from infra.settings import RuntimeSettings, resolve_runtime
from infra.tracking import TrackingUnavailableError
from operators.stage_io import StageIO, StageStats
from pipelines.dag import Pipeline
from pipelines.manifest import read_manifest
from pipelines.runner import run_pipeline as run_in_context
from pipelines.stage import Stage
from tests.infra.local_mlflow_server import mlflow_server
from tests.infra.local_ray_head import free_port
from tests.pipelines.test_runner import JoinConfig, ToyConfig, join_all, toy, workdir  # noqa: F401 (fixture)


def run_pipeline(pipeline: Pipeline) -> list:
    return run_in_context(pipeline, resolve_runtime(pipeline.config.runtime))


def test_unreachable_tracking_server_fails_fast_naming_it_before_any_stage_runs(workdir: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    config = ToyConfig(runtime=RuntimeSettings(store=str(workdir / "artifacts"), tracking_uri=uri))
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=uri):
        run_pipeline(toy(config))
    assert time.monotonic() - started < 15
    assert not (workdir / "artifacts").exists() or not any((workdir / "artifacts").rglob("manifest.json"))


@pytest.mark.slow
def test_outcome_lost_when_the_server_dies_mid_run_is_recorded_by_the_next_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No minutes of retries against a dead server: the run should fail at once.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server_dir, store = workdir / "mlflow", workdir / "artifacts"

    with mlflow_server(server_dir) as server:
        def join_then_lose_the_server(config: JoinConfig, io: StageIO) -> StageStats:
            result = join_all(config, io)
            os.killpg(server.pid, signal.SIGTERM)
            os.waitpid(server.pid, 0)
            return result

        def doomed(config: ToyConfig) -> Pipeline:
            stages = toy(config).stages
            return Pipeline("toy", (*stages[:2], Stage("join", join_then_lose_the_server, config.join,
                                                       inputs={"lines": "keep"})), config)

        config = ToyConfig(runtime=RuntimeSettings(store=str(store), tracking_uri=server.uri, ray_address="local"))
        with pytest.raises(Exception):
            run_pipeline(doomed(config))
    join_dirs = [p for p in (store / "toy" / "join").iterdir() if not p.name.startswith(".")]
    assert len(join_dirs) == 1 and (join_dirs[0] / "joined.txt").is_file()
    lost_run = read_manifest(join_dirs[0])["mlflow_run_id"]

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    with mlflow_server(server_dir) as server:  # the same backend store, back up
        _end_runs_left_open_by_the_failure(server.uri)
        config = ToyConfig(runtime=RuntimeSettings(store=str(store), tracking_uri=server.uri, ray_address="local"))
        outcomes = run_pipeline(doomed(config))
        assert all(o.cache_hit for o in outcomes)
        client = MlflowClient(server.uri)
        repaired = client.get_run(lost_run)
        assert repaired.info.status == "FINISHED"
        assert repaired.data.tags["llama2.cache_hit"] == "false" and repaired.data.tags["llama2.repaired"] == "true"
        assert repaired.data.metrics["counts/lines_out"] == 1
        join_hit = client.get_run(outcomes[-1].run_id)
        assert join_hit.data.tags["llama2.produced_by_run"] == lost_run
        assert [node.stage for node in lineage(client, outcomes[-1].run_id)] == ["source", "keep", "join"]


def _end_runs_left_open_by_the_failure(uri: str) -> None:
    """In one process the failed run's parent and child stay on MLflow's active-run stack."""
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")


def test_outputs_whose_runs_are_not_in_a_new_tracking_store_get_repair_runs_once(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(workdir / "artifacts")
    run_pipeline(toy(ToyConfig(runtime=RuntimeSettings(store=store, tracking_uri=f"sqlite:///{workdir / 'old.db'}",
                                                       ray_address="local"))))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    new_uri = f"sqlite:///{workdir / 'new.db'}"
    config = ToyConfig(runtime=RuntimeSettings(store=store, tracking_uri=new_uri))
    first, second = run_pipeline(toy(config)), run_pipeline(toy(config))

    client = MlflowClient(new_uri)
    producers = [client.get_run(client.get_run(o.run_id).data.tags["llama2.produced_by_run"]) for o in first]
    assert [p.data.tags["llama2.stage"] for p in producers] == ["source", "keep", "join"]
    assert all(p.data.tags["llama2.repairs_run"] != "none" and p.info.status == "FINISHED" for p in producers)
    again = [client.get_run(o.run_id).data.tags["llama2.produced_by_run"] for o in second]
    assert again == [p.info.run_id for p in producers]
    assert [node.stage for node in lineage(client, first[-1].run_id)] == ["source", "keep", "join"]
