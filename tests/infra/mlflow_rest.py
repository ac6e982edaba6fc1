"""Reading a tracking server the way any client of a team's MLflow does: its REST API, nothing of ours."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MlflowRest:
    uri: str  # http://127.0.0.1:PORT

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow/{endpoint}?{query}", timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def experiment(self, name: str) -> dict[str, Any]:
        return self.get("experiments/get-by-name", experiment_name=name)["experiment"]

    def runs(self, experiment_id: str, filter_string: str = "") -> list[dict[str, Any]]:
        """Every run of the experiment, newest first."""
        runs, token = [], None
        while True:
            body: dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": 100, "filter": filter_string,
                                    "order_by": ["attributes.start_time DESC"]}
            if token:
                body["page_token"] = token
            page = self.post("runs/search", body)
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return runs

    def run(self, run_id: str) -> dict[str, Any]:
        return self.get("runs/get", run_id=run_id)["run"]

    def artifact(self, run_id: str, path: str) -> bytes:
        query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
        with urllib.request.urlopen(f"{self.uri}/get-artifact?{query}", timeout=30) as response:
            return response.read()

    def artifact_paths(self, run_id: str) -> set[str]:
        return {f["path"] for f in self.get("artifacts/list", run_id=run_id).get("files", [])}

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        history = self.get("metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
        return sorted((int(m.get("step", 0)), float(m["value"])) for m in history)


def tags(entity: dict[str, Any]) -> dict[str, str]:
    """Tags of a run (or an experiment, a model version) as REST returns them."""
    listed = entity["data"].get("tags", []) if "data" in entity else entity.get("tags", [])
    return {t["key"]: t["value"] for t in listed}


def params(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: float(m["value"]) for m in run["data"].get("metrics", [])}


def is_child(run: dict[str, Any]) -> bool:
    return "mlflow.parentRunId" in tags(run)


def children(runs: list[dict[str, Any]], parent: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage name -> child run of `parent`; fails on two children for one stage."""
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        run_tags = tags(run)
        if run_tags.get("mlflow.parentRunId") == parent["info"]["run_id"]:
            assert run_tags["llama2.stage"] not in found, f"two child runs for {run_tags['llama2.stage']}"
            found[run_tags["llama2.stage"]] = run
    return found


@dataclass(frozen=True)
class LoggedDataset:
    name: str
    digest: str
    source: str  # the URI
    schema: dict[str, str]  # column -> type
    profile: dict[str, Any]


def datasets(run: dict[str, Any]) -> dict[str, dict[str, LoggedDataset]]:
    """Context (input/output) -> dataset name -> what the run logged of it."""
    found: dict[str, dict[str, LoggedDataset]] = {}
    for entry in run.get("inputs", {}).get("dataset_inputs", []):
        context = {t["key"]: t["value"] for t in entry.get("tags", [])}.get("mlflow.data.context", "")
        d = entry["dataset"]
        schema = json.loads(d["schema"]).get("mlflow_colspec", []) if d.get("schema") else []
        found.setdefault(context, {})[d["name"]] = LoggedDataset(
            d["name"], d["digest"], json.loads(d["source"]).get("uri", d["source"]),
            {c["name"]: c["type"] for c in schema}, json.loads(d["profile"]) if d.get("profile") else {},
        )
    return found
