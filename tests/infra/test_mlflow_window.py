"""MLflow as the user's window onto the DAG, read back over the REST API of a real `mlflow server`.

A three-stage pipeline (raw file -> rows -> filtered rows -> an exported Llama) runs four times
against one server: first (all ran), again (all cached), with a failing stage, and interrupted.
What a user would look for in the UI is then read back as any MLflow client would.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer

from infra.lineage import lineage, model_version
from infra.settings import RuntimeSettings, resolve_runtime
from model.convert import load_model
from pipelines.dag import Selection
from pipelines.runner import run_pipeline
from tests.infra.local_mlflow_server import TrackingServer, mlflow_server
from tests.infra.mlflow_rest import MlflowRest, children, datasets, is_child, metrics, params, tags
from tests.infra.window_pipeline import MODEL_NAME, ExportConfig, FilterRowsConfig, RowsConfig, WindowConfig, window


@dataclass(frozen=True)
class Scenario:
    rest: MlflowRest
    server: TrackingServer
    experiment: dict
    first: dict  # parent runs
    cached: dict
    failed: dict
    interrupted: dict
    runs: list[dict]
    config: WindowConfig
    model_dir: Path  # the export stage's published model/

    def child(self, parent: dict, stage: str) -> dict:
        return children(self.runs, parent)[stage]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("window")
    notes = root / "notes.txt"
    notes.write_text("1\n2\n3\n5\n8\n13\n")
    with mlflow_server(root / "mlflow") as server, pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        runtime = RuntimeSettings(store=str(root / "artifacts"), tracking_uri=server.uri)
        config = WindowConfig(runtime=runtime, rows=RowsConfig(notes=str(notes)), filter=FilterRowsConfig(min_value=3))
        context = resolve_runtime(runtime)
        outcomes = run_pipeline(window(config), context)
        run_pipeline(window(config), context)
        with pytest.raises(ValueError, match="value column holds text"):
            broken = config.model_copy(update={"filter": FilterRowsConfig(min_value=3, fail=True)})
            run_pipeline(window(broken), context, Selection.FROM, "filter")
        with pytest.raises(KeyboardInterrupt):
            stopped = config.model_copy(update={"filter": FilterRowsConfig(min_value=3, interrupt=True)})
            run_pipeline(window(stopped), context, Selection.ONLY, "filter")

        rest = MlflowRest(server.uri)
        experiment = rest.experiment("llama2")
        runs = rest.runs(experiment["experiment_id"])
        first, cached, failed, interrupted = reversed([r for r in runs if not is_child(r)])
        yield Scenario(rest, server, experiment, first, cached, failed, interrupted, runs, config,
                       outcomes[-1].output_dir / "model")
        mlflow.set_tracking_uri(None)


@pytest.fixture
def s3_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket in moto's S3 server on loopback, reached with credentials and endpoint from the environment."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                        "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="window-store")
    try:
        yield "s3://window-store/artifacts"
    finally:
        server.stop()


def note(run: dict) -> str:
    return tags(run)["mlflow.note.content"]


def test_the_experiment_is_marked_as_model_training_and_described(scenario: Scenario) -> None:
    experiment_tags = tags(scenario.experiment)
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    assert "one parent run per `llama2 run`" in experiment_tags["mlflow.note.content"]


def test_the_parent_run_is_named_after_the_pipeline_and_the_time(scenario: Scenario) -> None:
    assert re.fullmatch(r"window · \d{4}-\d\d-\d\d \d\d:\d\d", scenario.first["info"]["run_name"])
    assert {r["info"]["run_name"].split(" · ")[0] for r in (scenario.first, scenario.failed)} == {"window"}
    assert children(scenario.runs, scenario.first)["rows"]["info"]["run_name"] == "rows"


def test_the_parent_carries_the_selection_the_config_and_what_ran(scenario: Scenario) -> None:
    first, failed = params(scenario.first), params(scenario.failed)
    assert first == {"selection": "all", "force": "false", "stages": "rows,filter,export",
                     "store": str(Path(scenario.config.runtime.store))}
    assert failed["selection"] == "from filter" and failed["stages"] == "filter,export"
    assert {k: v for k, v in metrics(scenario.first).items() if k.startswith("stages/")} == {
        "stages/ran": 3, "stages/cached": 0, "stages/failed": 0}
    assert metrics(scenario.cached)["stages/cached"] == 3 and metrics(scenario.cached)["stages/ran"] == 0
    assert metrics(scenario.failed)["stages/failed"] == 1
    logged = yaml.safe_load(scenario.rest.artifact(scenario.first["info"]["run_id"], "config.yaml"))
    assert logged == json.loads(scenario.config.model_dump_json())
    assert "3 ran, 0 cached" in note(scenario.first) and "0 ran, 3 cached" in note(scenario.cached)


def test_every_run_has_a_one_line_note_saying_what_it_did(scenario: Scenario) -> None:
    for run in scenario.runs:
        assert note(run) and "\n" not in note(run), run["info"]["run_name"]
    filtered = note(scenario.child(scenario.first, "filter"))
    assert filtered.startswith("**filter**: keep the large values") and "6 rows in, 4 out, 2 rejected (small 2)" in filtered
    assert "cached: reused the output of run" in note(scenario.child(scenario.cached, "filter"))


def test_a_failed_stage_and_its_parent_say_why(scenario: Scenario) -> None:
    child = scenario.child(scenario.failed, "filter")
    for run in (child, scenario.failed):
        assert run["info"]["status"] == "FAILED"
        assert tags(run)["llama2.error_type"] == "ValueError"
        assert tags(run)["llama2.error"] == "value column holds text; check rows.notes"
        assert "FAILED" in note(run) and "ValueError: value column holds text" in note(run)
    assert tags(scenario.failed)["llama2.failed_stage"] == "filter"
    assert "export" not in children(scenario.runs, scenario.failed)


def test_an_interrupted_run_says_it_was_interrupted(scenario: Scenario) -> None:
    for run in (scenario.child(scenario.interrupted, "filter"), scenario.interrupted):
        assert run["info"]["status"] == "KILLED"
        assert tags(run)["llama2.interrupted"] == "true" and "INTERRUPTED" in note(run)


def test_params_are_what_differs_from_the_defaults_and_the_whole_section_is_kept(scenario: Scenario) -> None:
    child = scenario.child(scenario.first, "filter")
    assert params(child) == {"min_value": "3"}
    whole = {"min_value": 3, "fail": False, "interrupt": False}
    assert json.loads(tags(child)["llama2.config"]) == whole
    assert json.loads(scenario.rest.artifact(child["info"]["run_id"], "config.json")) == whole


def test_count_metrics_name_their_unit(scenario: Scenario) -> None:
    logged = metrics(scenario.child(scenario.first, "filter"))
    assert {"counts/rows_in": 6, "counts/rows_out": 4, "counts/rows_rejected": 2, "rejected/small": 2}.items() <= logged.items()


def test_raw_inputs_and_stage_outputs_are_datasets_with_schema_and_rows(scenario: Scenario) -> None:
    rows_run, filter_run = (scenario.child(scenario.first, s) for s in ("rows", "filter"))
    [raw] = datasets(rows_run)["input"].values()
    notes = Path(scenario.config.rows.notes)
    assert raw.name == "notes/notes.txt" and raw.source == notes.resolve().as_uri()
    assert raw.profile["bytes"] == notes.stat().st_size and raw.profile["modified"].startswith("20")

    made = datasets(rows_run)["output"]["rows"]
    assert made.digest == tags(rows_run)["llama2.fingerprint"]
    assert made.schema == {"rows/id": "string", "rows/value": "int64"}
    assert made.profile["rows_in_rows/"] == 6
    assert datasets(filter_run)["input"]["rows"].schema == made.schema  # the upstream output, as the stage read it
    filtered = datasets(filter_run)["output"]["filter"]
    assert (filtered.profile["rows_in_kept/"], filtered.profile["rows_in_rejects/"]) == (4, 2)


def test_a_stage_runs_duration_is_its_own_work(scenario: Scenario) -> None:
    for stage in ("rows", "filter", "export"):
        run = scenario.child(scenario.first, stage)
        duration = (run["info"]["end_time"] - run["info"]["start_time"]) / 1000
        logged = metrics(run)
        assert duration - logged["time/wall_s"] - logged["time/publish_s"] < 1.5, (stage, duration, logged)


def test_the_exported_model_is_a_registered_version_of_the_run_that_made_it(scenario: Scenario) -> None:
    export_run = scenario.child(scenario.first, "export")
    version = scenario.rest.get("model-versions/get", name=MODEL_NAME, version="1")["model_version"]
    assert version["run_id"] == export_run["info"]["run_id"]
    assert tags(version)["llama2.fingerprint"] == tags(export_run)["llama2.fingerprint"]
    listed = scenario.rest.get("model-versions/search", filter=f"name = '{MODEL_NAME}'")["model_versions"]
    assert [v["version"] for v in listed] == ["1"]  # the cached re-run registered nothing new
    outputs = export_run.get("outputs", {}).get("model_outputs", [])
    assert [f"models:/{o['model_id']}" for o in outputs] == [version["source"]]  # the run's logged model
    assert tags(scenario.child(scenario.cached, "export"))["llama2.model_version"] == f"models:/{MODEL_NAME}/1"
    assert f"models:/{MODEL_NAME}/1" in note(export_run) and f"{MODEL_NAME} v1" in note(scenario.first)


def test_a_registered_version_loads_by_its_model_uri(scenario: Scenario, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(scenario.server.uri)
    path = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/1", dst_path=str(tmp_path))
    loaded, published = load_model(Path(path), "hf").state_dict(), load_model(scenario.model_dir, "hf").state_dict()
    assert loaded.keys() == published.keys() and all(torch.equal(loaded[k], published[k]) for k in loaded)


def test_lineage_of_a_model_version_reaches_the_raw_input(scenario: Scenario) -> None:
    client = MlflowClient(scenario.server.uri)
    chain = lineage(client, model_version(client, f"models:/{MODEL_NAME}/1").run_id)
    assert [node.stage for node in chain] == ["rows", "filter", "export"]
    assert chain[1].params == {"fail": "false", "interrupt": "false", "min_value": "3"}  # the whole section


def test_a_model_in_an_object_store_is_registered_where_it_lies_not_copied(
    scenario: Scenario, s3_store: str, tmp_path: Path
) -> None:
    runtime = RuntimeSettings(store=s3_store, tracking_uri=scenario.server.uri, local_cache=str(tmp_path / "cache"))
    config = scenario.config.model_copy(update={"runtime": runtime, "export": ExportConfig(seed=1)})
    started = time.time()
    outcomes = run_pipeline(window(config, registers="window-model-s3"), resolve_runtime(runtime))
    version = scenario.rest.get("model-versions/get", name="window-model-s3", version="1")["model_version"]
    assert version["source"] == f"{outcomes[-1].uri}/model" and version["source"].startswith("s3://")
    copied = [p for p in (Path(scenario.server.backend_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
              .rglob("*.safetensors") if p.stat().st_mtime >= started]
    assert copied == []
    path = mlflow.artifacts.download_artifacts("models:/window-model-s3/1", dst_path=str(tmp_path / "download"))
    assert load_model(Path(path), "hf").tok_embeddings.weight.shape[0] == 64
