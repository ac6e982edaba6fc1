"""The cluster path end to end: `llama2 submit` (and Ray's own `ray job submit`) to a real Ray head,
lineage in a real MLflow server.

The module starts one Ray head on 127.0.0.1 with token authentication on, as `ray start` has it
by default; each test starts the tracking service it needs (`mlflow server` on PostgreSQL, or
SQLite without its binaries; a local SQLite file) and stops everything by process id, also when
it fails. Lineage is read back over MLflow's REST API, as any client of a team's tracking server
would.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.infra.local_mlflow_server import TrackingServer, mlflow_server, postgres_bin_dir, postgres_database
from tests.infra.local_ray_head import BIN, RayHead, free_port, ray_head
from tests.infra.mlflow_rest import MlflowRest, children, datasets, is_child, tags

REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize"]
UPSTREAM = {"ingest": [], "dedup": ["ingest"], "filter": ["dedup"], "train_tokenizer": ["filter"],
            "tokenize": ["filter", "train_tokenizer"]}
RAW_INPUTS = ["django-4.2/django-docs-4.2.jsonl.gz", "django-5.2/django-docs-5.2.jsonl.zst",
              "python-3.11/python-docs-3.11.parquet"]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    with ray_head(tmp_path_factory.mktemp("ray") / "ray-head.log") as running:
        yield running


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[TrackingServer]:
    """A tracking server on PostgreSQL, as a shared cluster has it (`.ci/run` installs it); on SQLite
    where its binaries are missing. SQLite-backed servers are what the other server tests use, so
    one backend per run keeps this, the suite's longest test, from running twice."""
    if postgres_bin_dir() is None:
        with mlflow_server(tmp_path / "mlflow") as server:
            yield server
        return
    with postgres_database() as database, mlflow_server(tmp_path / "mlflow", backend_uri=database) as server:
        yield server


def test_submitted_demo_records_full_lineage_and_resubmission_is_all_cache_hits(
    head: RayHead, tracking: TrackingServer, tmp_path: Path
) -> None:
    store = tmp_path / "artifacts"
    first = _submit(head, tracking, store)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    assert "submitted job llama2-pretrain-" in first.stdout
    assert "SUCCEEDED" in first.stdout

    rest = MlflowRest(tracking.uri)
    experiment_id = rest.experiment("llama2")["experiment_id"]
    runs = rest.runs(experiment_id)
    parents = [r for r in runs if not is_child(r)]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    produced = children(runs, parents[0])
    assert sorted(produced) == sorted(STAGES)

    fingerprints = {stage: tags(run)["llama2.fingerprint"] for stage, run in produced.items()}
    for stage, run in produced.items():
        run_tags = tags(run)
        manifest_path = store / "pretrain" / stage / fingerprints[stage] / "manifest.json"
        on_disk = json.loads(manifest_path.read_text())
        assert run["info"]["status"] == "FINISHED", stage
        assert run_tags["llama2.cache_hit"] == "false" and on_disk["mlflow_run_id"] == run["info"]["run_id"], stage
        unit = on_disk["unit"]
        assert {m["key"] for m in run["data"]["metrics"]} >= {f"counts/{unit}_in", f"counts/{unit}_out",
                                                               f"counts/{unit}_rejected", "time/wall_s"}
        assert json.loads(run_tags["llama2.config"]) == on_disk["config"], f"{stage}: the whole section is a tag"
        for upstream in UPSTREAM[stage]:
            assert run_tags[f"llama2.upstream.{upstream}.run_id"] == produced[upstream]["info"]["run_id"]

        logged_datasets = datasets(run)
        [output] = logged_datasets["output"].values()
        assert (output.name, output.digest, output.source) == (stage, fingerprints[stage], manifest_path.parent.as_uri())
        assert bool(output.schema) == (stage != "train_tokenizer"), f"{stage}: columns of its Parquet/Arrow files"
        upstream_outputs = {(d.name, d.digest, d.source) for d in logged_datasets.get("input", {}).values()
                            if d.name in UPSTREAM[stage]}
        assert upstream_outputs == {
            (name, fingerprints[name], (store / "pretrain" / name / fingerprints[name]).as_uri())
            for name in UPSTREAM[stage]
        }, stage

        if stage == "ingest":  # the raw files, by source
            assert set(logged_datasets["input"]) == set(RAW_INPUTS)
        assert "manifest.json" in rest.artifact_paths(run["info"]["run_id"]), stage
        logged = json.loads(rest.artifact(run["info"]["run_id"], "manifest.json"))
        assert logged["fingerprint"] == fingerprints[stage] and logged["files"] == on_disk["files"], stage

    second = _submit(head, tracking, store)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-3000:]
    runs = rest.runs(experiment_id)
    newest = max((r for r in runs if not is_child(r)), key=lambda r: r["info"]["start_time"])
    assert newest["info"]["run_id"] != parents[0]["info"]["run_id"]
    cached = children(runs, newest)
    assert sorted(cached) == sorted(STAGES)
    for stage, run in cached.items():
        run_tags = tags(run)
        assert run_tags["llama2.cache_hit"] == "true", stage
        assert run_tags["llama2.produced_by_run"] == produced[stage]["info"]["run_id"], stage
        assert run_tags["llama2.fingerprint"] == fingerprints[stage], stage
    assert all(len(list((store / "pretrain" / stage).glob("*/manifest.json"))) == 1 for stage in STAGES)


def test_ray_job_submit_runs_the_pipeline_as_the_readme_shows(head: RayHead, tmp_path: Path) -> None:
    """Ray's own CLI, a local SQLite tracking file: the job's driver runs where the head is."""
    store, tracking_uri = tmp_path / "artifacts", f"sqlite:///{tmp_path / 'mlflow.db'}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, "RAY_USAGE_STATS_ENABLED": "0"}}
    env = dict(head.env, RAY_API_SERVER_ADDRESS=head.dashboard_url)
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--submission-id", "pretrain-e2e", "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "llama2", "run", "pretrain", "--until", "tokenize", "--set", f"runtime.store={store}"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    status = subprocess.run([str(BIN / "ray"), "job", "status", "pretrain-e2e"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert "succeeded" in (status.stdout + status.stderr).lower()

    for stage in STAGES:
        manifests = list((store / "pretrain" / stage).glob("*/manifest.json"))
        assert len(manifests) == 1, stage
        manifest = json.loads(manifests[0].read_text())
        assert manifest["counts"]["in"] == manifest["counts"]["out"] + manifest["counts"]["rejected"]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("llama2").experiment_id])
    produced = sorted(r.data.tags["llama2.stage"] for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert produced == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_job_fails_fast_naming_a_tracking_server_that_is_down(head: RayHead, tmp_path: Path) -> None:
    down = TrackingServer(uri=f"http://127.0.0.1:{free_port()}", backend_uri="", pid=0)
    store = tmp_path / "artifacts"
    failed = _submit(head, down, store)
    assert failed.returncode == 1, failed.stdout[-3000:]
    assert f"MLflow tracking server at {down.uri} is not reachable" in failed.stdout
    assert not list(store.rglob("manifest.json"))


def test_job_api_refuses_a_client_without_the_cluster_token(head: RayHead) -> None:
    env = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    # A local ray.init() may have left a token of its own in ~/.ray/auth_token: point HOME elsewhere.
    env.update(RAY_AUTH_MODE="disabled", HOME=str(Path(head.env.get("HOME", "/")) / "nonexistent-home"))
    refused = _llama2(["submit", "--list", "--address", head.dashboard_url], env)
    assert refused.returncode == 2
    assert "RAY_AUTH_MODE=token" in refused.stderr and head.dashboard_url in refused.stderr

    allowed = _llama2(["submit", "--list", "--address", head.dashboard_url], head.env)
    assert allowed.returncode == 0, allowed.stderr[-3000:]


def _submit(head: RayHead, tracking: TrackingServer, store: Path) -> subprocess.CompletedProcess:
    env = dict(head.env, MLFLOW_TRACKING_URI=tracking.uri)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    return _llama2(["submit", "pretrain", "--until", "tokenize", "--set", f"runtime.store={store}", "--address", head.dashboard_url], env)


def _llama2(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "llama2"), *args], env=env, capture_output=True, text=True, timeout=600)
