"""The cluster path end to end: `llama2 submit` to a real Ray head, lineage in a real MLflow server.

Each test starts its own services on 127.0.0.1 (a Ray head with token authentication on, as
`ray start` has it by default; `mlflow server` on SQLite, then on PostgreSQL) and stops them by
process id, also when it fails. Lineage is read back over MLflow's REST API, as any client of
a team's tracking server would.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.local_mlflow_server import TrackingServer, mlflow_server, postgres_bin_dir, postgres_database
from tests.infra.local_ray_head import BIN, RayHead, free_port, ray_head

STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize"]
UPSTREAM = {"ingest": [], "dedup": ["ingest"], "filter": ["dedup"], "train_tokenizer": ["filter"],
            "tokenize": ["filter", "train_tokenizer"]}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    with ray_head(tmp_path_factory.mktemp("ray") / "ray-head.log") as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def tracking(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrackingServer]:
    if request.param == "sqlite":
        with mlflow_server(tmp_path / "mlflow") as server:
            yield server
        return
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL binaries not found (Debian: apt-get install -y postgresql)")
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

    experiment_id = _rest(tracking, "GET", "experiments/get-by-name", {"experiment_name": "llama2"})["experiment"]["experiment_id"]
    runs = _search_runs(tracking, experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in _tags(r)]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    produced = _children(runs, parents[0])
    assert sorted(produced) == sorted(STAGES)

    fingerprints = {stage: _tags(run)["llama2.fingerprint"] for stage, run in produced.items()}
    for stage, run in produced.items():
        tags = _tags(run)
        manifest_path = store / "pretrain" / stage / fingerprints[stage] / "manifest.json"
        on_disk = json.loads(manifest_path.read_text())
        assert run["info"]["status"] == "FINISHED", stage
        assert tags["llama2.cache_hit"] == "false" and on_disk["mlflow_run_id"] == run["info"]["run_id"], stage
        unit = on_disk["unit"]
        assert {m["key"] for m in run["data"]["metrics"]} >= {f"counts/{unit}_in", f"counts/{unit}_out",
                                                               f"counts/{unit}_rejected", "time/wall_s"}
        assert run["data"].get("params"), f"{stage} has no config params"
        for upstream in UPSTREAM[stage]:
            assert tags[f"llama2.upstream.{upstream}.run_id"] == produced[upstream]["info"]["run_id"]

        datasets = _datasets(run)
        assert datasets["output"] == {(stage, fingerprints[stage], manifest_path.parent.as_uri())}, stage
        assert datasets.get("input", set()) == {
            (name, fingerprints[name], (store / "pretrain" / name / fingerprints[name]).as_uri())
            for name in UPSTREAM[stage]
        }, stage

        listed = _rest(tracking, "GET", "artifacts/list", {"run_id": run["info"]["run_id"]}).get("files", [])
        assert "manifest.json" in {f["path"] for f in listed}, stage
        logged = json.loads(_get_artifact(tracking, run["info"]["run_id"], "manifest.json"))
        assert logged["fingerprint"] == fingerprints[stage] and logged["files"] == on_disk["files"], stage

    second = _submit(head, tracking, store)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-3000:]
    runs = _search_runs(tracking, experiment_id)
    newest = max((r for r in runs if "mlflow.parentRunId" not in _tags(r)), key=lambda r: r["info"]["start_time"])
    assert newest["info"]["run_id"] != parents[0]["info"]["run_id"]
    cached = _children(runs, newest)
    assert sorted(cached) == sorted(STAGES)
    for stage, run in cached.items():
        tags = _tags(run)
        assert tags["llama2.cache_hit"] == "true", stage
        assert tags["llama2.produced_by_run"] == produced[stage]["info"]["run_id"], stage
        assert tags["llama2.fingerprint"] == fingerprints[stage], stage
    assert all(len(list((store / "pretrain" / stage).glob("*/manifest.json"))) == 1 for stage in STAGES)


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


def _rest(server: TrackingServer, method: str, endpoint: str, params: dict[str, Any]) -> dict[str, Any]:
    url = f"{server.uri}/api/2.0/mlflow/{endpoint}"
    if method == "GET":
        request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(params)}")
    else:
        request = urllib.request.Request(url, data=json.dumps(params).encode(), method=method,
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def _get_artifact(server: TrackingServer, run_id: str, path: str) -> bytes:
    query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
    with urllib.request.urlopen(f"{server.uri}/get-artifact?{query}", timeout=30) as response:
        return response.read()


def _search_runs(server: TrackingServer, experiment_id: str) -> list[dict[str, Any]]:
    runs, token = [], None
    while True:
        body: dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": 100}
        if token:
            body["page_token"] = token
        page = _rest(server, "POST", "runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _children(runs: list[dict[str, Any]], parent: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage name -> child run of `parent`; fails on two children for one stage."""
    children: dict[str, dict[str, Any]] = {}
    for run in runs:
        tags = _tags(run)
        if tags.get("mlflow.parentRunId") == parent["info"]["run_id"]:
            assert tags["llama2.stage"] not in children, f"two child runs for {tags['llama2.stage']}"
            children[tags["llama2.stage"]] = run
    return children


def _datasets(run: dict[str, Any]) -> dict[str, set[tuple[str, str, str]]]:
    """Context (input/output) -> {(name, digest, source uri)} of the run's logged datasets."""
    found: dict[str, set[tuple[str, str, str]]] = {}
    for entry in run.get("inputs", {}).get("dataset_inputs", []):
        context = {t["key"]: t["value"] for t in entry.get("tags", [])}.get("mlflow.data.context", "")
        dataset = entry["dataset"]
        source = json.loads(dataset["source"]).get("uri", dataset["source"])
        found.setdefault(context, set()).add((dataset["name"], dataset["digest"], source))
    return found
