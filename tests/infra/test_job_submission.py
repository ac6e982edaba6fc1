"""`ray job submit --working-dir . -- llama2 run pretrain` against a real local Ray cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.infra.local_ray_head import BIN, ray_head

REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize"]

pytestmark = pytest.mark.slow


def test_submitted_pretrain_job_succeeds_and_records_lineage(tmp_path: Path) -> None:
    store, db = tmp_path / "artifacts", tmp_path / "mlflow.db"
    tracking_uri = f"sqlite:///{db}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, "RAY_USAGE_STATS_ENABLED": "0"}}
    with ray_head(tmp_path / "ray-head.log") as head:
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
    children = sorted(r.data.tags["llama2.stage"] for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert children == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs)
