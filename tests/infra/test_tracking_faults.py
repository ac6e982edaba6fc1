"""A tracking server that is down: fail fast at the start; lost mid-run, the run goes on without it, ends
with exit 75 and one line, and the next run records what MLflow is missing.

Uses the toy pipeline of tests/pipelines/test_runner.py, so the faults are tested without the data
operators, against a real `mlflow server` on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from infra.lineage import lineage
from infra.settings import RuntimeSettings, resolve_runtime
from infra.tracking import TrackingUnavailableError
from operators.stage_io import StageIO, StageStats
from pipelines import registry
from pipelines.cli import main
from pipelines.dag import Pipeline, PipelineSpec
from pipelines.manifest import read_manifest
from pipelines.runner import run_pipeline as run_in_context
from pipelines.stage import Stage
from tests.infra.local_mlflow_server import mlflow_server
from tests.infra.local_ray_head import free_port
from tests.pipelines.test_runner import KeepConfig, ToyConfig, keep_long, toy


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


@dataclass(frozen=True)
class LostMidRun:
    """`llama2 run toy` whose server dies inside stage `keep`, then the same run with the server back."""

    code: int
    stderr: str
    seconds_after_loss: float
    manifests: dict[str, dict]  # stage -> its published manifest
    again: list  # the second run's outcomes
    uri: str


@pytest.fixture(scope="module")
def lost_mid_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LostMidRun]:
    root = tmp_path_factory.mktemp("lost")
    server_dir, store, port = root / "mlflow", root / "artifacts", free_port()
    lost_at: list[float] = []

    def keep_then_lose_the_server(config: KeepConfig, io: StageIO) -> StageStats:
        stats = keep_long(config, io)
        os.killpg(server.pid, signal.SIGTERM)
        os.waitpid(server.pid, 0)
        lost_at.append(time.monotonic())
        io.tracker.log_metrics({"toy/after_the_loss": 7.0}, step=3)
        io.tracker.log_text("said after the loss", "notes/late.txt")
        return stats

    def doomed(config: ToyConfig) -> Pipeline:
        source, _, join = toy(config).stages
        keep = Stage("keep", keep_then_lose_the_server, config.keep, inputs={"lines": "source"})
        return Pipeline("toy", (source, keep, join), config)

    spec = PipelineSpec(name="toy", config_model=ToyConfig, default_config=None, build=doomed)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(registry, "pipeline_specs", lambda: {"toy": spec})
        with mlflow_server(server_dir, port=port) as server:
            err = StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["--quiet", "run", "toy", "--set", f"runtime.store={store}",
                             "--set", f"runtime.tracking_uri={server.uri}", "--set", "runtime.ray_address=local"])
        seconds = time.monotonic() - lost_at[0]
        manifests = {stage: read_manifest(next(p for p in (store / "toy" / stage).iterdir()
                                               if not p.name.startswith(".")))
                     for stage in ("source", "keep", "join")}
        with mlflow_server(server_dir, port=port) as server:  # the same store, back where it was
            config = ToyConfig(runtime=RuntimeSettings(store=str(store), tracking_uri=server.uri, ray_address="local"))
            again = run_pipeline(doomed(config))
            yield LostMidRun(code, err.getvalue(), seconds, manifests, again, server.uri)
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_a_server_lost_mid_run_ends_the_run_with_exit_75_and_one_line_naming_it_and_what_was_published(
    lost_mid_run: LostMidRun,
) -> None:
    assert lost_mid_run.code == 75
    warnings = [line for line in lost_mid_run.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "Traceback" not in lost_mid_run.stderr, lost_mid_run.stderr
    assert "the MLflow tracking server at http://127.0.0.1:" in warnings[0]
    assert "3 stage(s) ran and published (source, keep, join)" in warnings[0]


@pytest.mark.slow
def test_the_stages_left_run_and_publish_without_waiting_on_the_lost_server(lost_mid_run: LostMidRun) -> None:
    assert lost_mid_run.seconds_after_loss < 60
    assert lost_mid_run.manifests["keep"]["mlflow_run_id"]  # its run had started
    assert lost_mid_run.manifests["join"]["mlflow_run_id"] is None  # none was started for it


@pytest.mark.slow
def test_the_next_run_records_the_stages_of_the_run_that_lost_its_server(lost_mid_run: LostMidRun) -> None:
    assert all(o.cache_hit for o in lost_mid_run.again)
    client = MlflowClient(lost_mid_run.uri)
    keep = client.get_run(lost_mid_run.manifests["keep"]["mlflow_run_id"])
    assert keep.info.status == "FINISHED" and keep.data.tags["llama2.repaired"] == "true"
    assert keep.data.metrics["counts/lines_out"] == 3
    join_hit = client.get_run(lost_mid_run.again[-1].run_id)
    join = client.get_run(join_hit.data.tags["llama2.produced_by_run"])
    assert join.data.tags["llama2.repairs_run"] == "none" and join.info.status == "FINISHED"
    assert [node.stage for node in lineage(client, join_hit.info.run_id)] == ["source", "keep", "join"]


@pytest.mark.slow
def test_what_a_stage_logged_after_the_loss_reaches_its_run_late_and_what_cannot_is_named(
    lost_mid_run: LostMidRun,
) -> None:
    assert lost_mid_run.manifests["keep"]["tracking_backlog"]["lost"] == ["artifact notes/late.txt"]
    client = MlflowClient(lost_mid_run.uri)
    run_id = lost_mid_run.manifests["keep"]["mlflow_run_id"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "toy/after_the_loss")] == [(3, 7.0)]
    note = client.get_run(run_id).data.tags["mlflow.note.content"]
    assert "logged after the stage" in note and "1 metric value (toy/after_the_loss)" in note
    assert "never logged: artifact notes/late.txt" in note


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
