"""Recording stage runs in MLflow: one parent run per invocation, one child run per stage.

    experiment "llama2"   tagged as a model-training experiment, with a one-line description
      parent  "pretrain · 2026-11-30 14:02"   params: selection, force, stages, store
              metrics stages/ran|cached|failed, time/ray_startup_s; config.yaml + config.json
        child "ingest"  params: the section's keys that differ from the paper's defaults
        child "dedup"   tags: fingerprint, code version, upstream links, the whole section
        ...             note: what the stage does and what it produced (or why it failed)

Every run carries a one-line note (MLflow's description, `mlflow.note.content`). This module
connects, and records what a stage run is and what it produced; `infra/run_lifecycle.py` opens
and ends the runs (failed, interrupted). Tag names are the lineage schema that `infra/lineage.py`
reads back; keep the two in step.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from pydantic import BaseModel, ValidationError

from infra.tracking_outbox import Backlog, Outbox

log = logging.getLogger(__name__)

TAG_PREFIX = "llama2."
TAG_PIPELINE = "llama2.pipeline"
TAG_STAGE = "llama2.stage"
TAG_FINGERPRINT = "llama2.fingerprint"
TAG_CODE_VERSION = "llama2.code_version"  # parent run: the package version and git commit
TAG_CODE_HASH = "llama2.code_hash"  # stage run: the hash of the code its stage function reaches
TAG_CACHE_HIT = "llama2.cache_hit"
TAG_PRODUCED_BY = "llama2.produced_by_run"
TAG_OUTPUT_URI = "llama2.output_uri"
TAG_UPSTREAM_FINGERPRINT = "llama2.upstream.{name}.fingerprint"
TAG_UPSTREAM_RUN = "llama2.upstream.{name}.run_id"
TAG_UPSTREAM_STAGES = "llama2.upstream"
TAG_INPUT_ROLES = "llama2.inputs"  # role=stage, ...: which upstream output fed which role of the operator
TAG_CONFIG = "llama2.config"  # the stage's whole config section as JSON (params hold only what differs)
TAG_TRACKING_GAP = "llama2.tracking_gap"  # what the stage's tracker could not deliver while it ran
BACKLOG_KEY = "tracking_backlog"  # in a manifest: infra.tracking_outbox.Backlog.as_json()
HAND_BACK_S = 10.0  # after a stage, how long its tracker may still try to deliver
TAG_NOTE = MLFLOW_RUN_NOTE  # MLflow's run (and experiment) description, shown on its page
# MLflow's own mark of what an experiment is for; "custom_model_development" is the UI's
# "Model training" kind (its runs table), as opposed to "genai_development" (traces).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
EXPERIMENT_NOTE = (
    "llama2-pipeline: one parent run per `llama2 run` (named after the pipeline and the time), one child "
    "run per stage; a stage's output is a dataset named after it whose digest is its fingerprint."
)
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_PARAM_VALUE_LIMIT = 6000
_TAG_VALUE_LIMIT = 8000
PROBE_TIMEOUT_S = 5.0


class MlflowTracker:
    """The `operators.stage_io.Tracker` of one stage's MLflow run.

    It holds only the tracking URI and the run id, so it pickles to Ray tasks and Ray Train
    workers; the client and the outbox are made where it is first used. Nothing it does waits on
    the server or fails when the server is gone: values wait in the outbox (infra/tracking_outbox.py)
    and `hand_back` returns what could not be delivered. Without a run id (the server was lost
    before the stage's run started) it only keeps what it is given.
    """

    def __init__(self, tracking_uri: str, run_id: str | None):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client: MlflowClient | None = None
        self._outbox: Outbox | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], state["run_id"])

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            bound_http_requests()
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            sending = self.run_id is not None
            self._outbox = Outbox(self._send_batch if sending else None, self._send_artifact if sending else None,
                                  self.run_id or "(none: tracking lost)")
        return self._outbox

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.outbox.put(metrics=[(name, float(value), now, step or 0) for name, value in metrics.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.outbox.put(params={k: param_value(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.outbox.put(tags={k: str(v) for k, v in tags.items()})

    def log_text(self, text: str, artifact_file: str) -> None:
        local = _artifact_file(artifact_file)
        local.write_text(text, encoding="utf-8")
        self.outbox.put_artifact(local, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        local = _artifact_file(artifact_file)
        figure.savefig(local)  # now, in the caller's thread: matplotlib is not thread-safe
        self.outbox.put_artifact(local, artifact_file)

    def hand_back(self, timeout_s: float) -> Backlog:
        """Deliver what waits within `timeout_s` (one more try now); return what could not be."""
        return self.outbox.hand_back(timeout_s) if self._outbox is not None else Backlog()

    def take_back(self, backlog: Backlog) -> None:
        """Send what another tracker of this run (a Ray Train worker's) handed back."""
        self.outbox.take_back(backlog)

    def _send_batch(self, batch: Backlog) -> None:
        log_backlog(self.client, self.run_id, batch)

    def _send_artifact(self, local_file: Path, artifact_file: str) -> None:
        folder = str(PurePosixPath(artifact_file).parent)
        self.client.log_artifact(self.run_id, str(local_file), None if folder == "." else folder)


def _artifact_file(artifact_file: str) -> Path:
    """A new local file with the artifact's name, in a directory of its own (the outbox deletes it)."""
    return Path(tempfile.mkdtemp(prefix="llama2-artifact-")) / PurePosixPath(artifact_file).name


def log_backlog(client: MlflowClient, run_id: str, backlog: Backlog) -> None:
    """Log a backlog's metric values (with their own step and time), params and tags to `run_id`."""
    while backlog.sendable:
        batch, backlog = backlog.split()
        client.log_batch(
            run_id,
            metrics=[Metric(name, value, timestamp, step) for name, value, timestamp, step in batch.metrics],
            params=[Param(k, v) for k, v in batch.params.items()],
            tags=[RunTag(k, v) for k, v in batch.tags.items()],
        )


def bound_http_requests() -> None:
    """Bound every MLflow request of this process, where the user has not set the bounds.

    MLflow's defaults (7 retries with back-off up to 120 s, a 120 s timeout) stalled a run for
    16.5 minutes when the server went away. These give a call at most ~50 s against a server that
    hangs and a few seconds against one that refuses; a Ray worker that logs sets them too.
    """
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached; the message names the URI."""


def connect(uri: str, experiment: str, artifact_location: str | None) -> str:
    """Point MLflow at `uri`, make sure `experiment` exists (marked as a model-training experiment,
    with a description), and return its id.

    A tracking server is probed first (`<uri>/health`, a few seconds at most): MLflow's own
    client retries an unreachable server for minutes, and a run must fail before any stage
    writes output, with a message naming the server.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    bound_http_requests()
    probe_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, artifact_location=artifact_location
        )
        # A user's own description or kind wins: set them only where they are missing.
        present = found.tags if found else {}
        for key, value in ((TAG_EXPERIMENT_KIND, MODEL_TRAINING), (TAG_NOTE, EXPERIMENT_NOTE)):
            if key not in present:
                client.set_experiment_tag(experiment_id, key, value)
    except Exception as err:  # MLflow raises many types for an unreachable store
        raise TrackingUnavailableError(f"cannot use the MLflow tracking store at {redact(uri)}: {err}") from err
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def probe_tracking_server(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingUnavailableError unless an http(s) tracking URI answers within `timeout_s`.

    Any HTTP answer counts (a 401 from an authenticating proxy means the server is there; the
    API calls that follow report the rest). Other URI schemes are left to MLflow.
    """
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _health(uri, deadline - time.monotonic())
            return
        except urllib.error.HTTPError:
            return
        except OSError as err:  # refused, unresolvable, timed out
            if time.monotonic() + 0.5 >= deadline:
                raise TrackingUnavailableError(
                    f"MLflow tracking server at {redact(uri)} is not reachable ({getattr(err, 'reason', err)}); "
                    "start it, or point MLFLOW_TRACKING_URI / runtime.tracking_uri at a running server. "
                    "Nothing was run."
                ) from err
            time.sleep(0.5)


def answers(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the tracking server still answers its health check (below 500) within `timeout_s`; a
    store that is not a server always counts as answering."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return True
    try:
        _health(uri, timeout_s)
        return True
    except urllib.error.HTTPError as err:
        return err.code < 500
    except OSError:
        return False


def _health(uri: str, timeout_s: float) -> None:
    urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=max(0.5, min(2.0, timeout_s))).close()


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where the MLflow UI shows the experiment's runs table (or one run): on a tracking server, or
    on the `mlflow ui` that serves a local store at its default address.

    MLflow 3.17's UI opens an experiment as GenAI or model training by its sidebar switch, kept per
    browser, whatever the experiment's kind tag says; `workflowType=machine_learning` sets it.
    """
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "/runs")
    page += "?workflowType=machine_learning"
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return f"{redact(tracking_uri).rstrip('/')}/{page}"
    return f"http://127.0.0.1:5000/{page} (after `mlflow ui --backend-store-uri {tracking_uri}`)"


def redacted(value: Any) -> Any:
    """`value` (a config as JSON-like data) with the credentials of every URI in it masked."""
    if isinstance(value, Mapping):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return redact(value)
    return value


def redact(uri: str) -> str:
    """`uri` without any user:password part, for messages and logs."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


def stage_note_prefix(stage: str, description: str) -> str:
    return f"**{stage}**: {description}" if description else f"**{stage}**"



def log_stage_identity(
    *,
    config: BaseModel,
    fingerprint: str,
    code_hash: str,
    upstream: Mapping[str, tuple[str, str | None]],
    roles: Mapping[str, str],
    output_uri: str,
) -> None:
    """Params = the keys of the stage's config section that differ from the paper's defaults (the
    runs table stays readable); the whole section is the `llama2.config` tag (and, with the
    outcome, `config.json`).
    Tags = fingerprint, code hash, upstream links by stage and role."""
    section = config.model_dump(mode="json")
    mlflow.log_params({k: param_value(v) for k, v in changed_params(config).items()})
    tags = {
        TAG_FINGERPRINT: fingerprint,
        TAG_CODE_HASH: code_hash,
        TAG_OUTPUT_URI: output_uri,
        TAG_UPSTREAM_STAGES: ",".join(upstream),
        TAG_INPUT_ROLES: ",".join(f"{role}={stage}" for role, stage in sorted(roles.items())),
        TAG_CONFIG: _clipped(json.dumps(section, sort_keys=True), _TAG_VALUE_LIMIT),
    }
    for name, (upstream_fingerprint, upstream_run) in upstream.items():
        tags[TAG_UPSTREAM_FINGERPRINT.format(name=name)] = upstream_fingerprint
        if upstream_run:
            tags[TAG_UPSTREAM_RUN.format(name=name)] = upstream_run
    mlflow.set_tags(tags)


def changed_params(config: BaseModel) -> dict[str, Any]:
    """The section's keys (dotted) whose values differ from the config class's defaults, which
    are the paper's; all of them when the defaults alone do not validate."""
    current = flatten(config.model_dump(mode="json"))
    try:
        defaults = flatten(type(config)().model_dump(mode="json"))
    except ValidationError:
        return current
    return {key: value for key, value in current.items() if key not in defaults or defaults[key] != value}


def log_cache_hit(produced_by: str | None, description: str, manifest: Mapping[str, Any]) -> None:
    producer = produced_by or "unknown"
    mlflow.set_tags({
        TAG_CACHE_HIT: "true", TAG_PRODUCED_BY: producer,
        TAG_NOTE: f"{stage_note_prefix(manifest['stage'], description)} — cached: reused the output of run "
                  f"{producer} ({counts_text(manifest)})",
    })


def log_stage_outcome(metrics: Mapping[str, float], manifest: Mapping[str, Any], run_id: str, description: str,
                      tags: Mapping[str, str] | None = None) -> None:
    """The outcome in the stage's run; with what its tracker could not deliver during the stage (the
    manifest's `tracking_backlog`), logged now and named in the note."""
    backlog = Backlog.from_json(manifest.get(BACKLOG_KEY, {}))
    note = f"{stage_note_prefix(manifest['stage'], description)} — {counts_text(manifest)}{late_text(backlog)}"
    mlflow.set_tags({**(tags or {}), TAG_CACHE_HIT: "false", TAG_PRODUCED_BY: run_id, TAG_NOTE: note,
                     **({TAG_TRACKING_GAP: backlog.describe()} if backlog else {})})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    if backlog:
        log_backlog(MlflowClient(), run_id, backlog)
    log_manifest_artifact(manifest)


def late_text(backlog: Backlog) -> str:
    """The note's words for what the stage's tracker could not deliver while it ran ('' if nothing)."""
    if not backlog:
        return ""
    held = Backlog(backlog.metrics, backlog.params, backlog.tags)
    text = f"; logged after the stage, the tracking server did not take them during it: {held.describe()}" \
        if held else ""
    return text + (f"; never logged: {', '.join(backlog.lost)}" if backlog.lost else "")


def set_run_tags(run_id: str, tags: Mapping[str, str]) -> None:
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def append_to_note(run_id: str, text: str) -> None:
    """Add `text` to the end of a run's note (e.g. the model version a stage's output became)."""
    client = MlflowClient()
    note = client.get_run(run_id).data.tags.get(TAG_NOTE, "")
    client.set_tag(run_id, TAG_NOTE, f"{note}; {text}" if note else text)


def counts_text(manifest: Mapping[str, Any]) -> str:
    """'947 documents in, 529 out, 418 rejected (duplicate 418)', with planned rejects named as such."""
    counts, unit = manifest.get("counts", {}), manifest.get("unit", "items")
    reasons = {reason: n for reason, n in manifest.get("rejected_reasons", {}).items() if n}
    planned = set(manifest.get("planned_rejects", []))
    text = f"{counts.get('in', 0):,} {unit} in, {counts.get('out', 0):,} out, {counts.get('rejected', 0):,} rejected"
    if reasons:
        text += " (" + ", ".join(f"{r} {n:,}" + (" planned" if r in planned else "") for r, n in reasons.items()) + ")"
    meaning = manifest.get("summary", {}).get("counts_meaning")
    return f"{text}. {meaning}" if meaning else text


def log_manifest_artifact(manifest: Mapping[str, Any]) -> None:
    """The manifest, and the config section it was made with as `config.json`.

    Artifacts are logged with the outcome only: MLflow caches a run's artifact repository (with the
    server's address) by run id for the life of the process, so a run that a repair completes after
    its server came back elsewhere (infra/lineage_repair.py) must not have logged any before."""
    mlflow.log_dict(dict(manifest), "manifest.json")
    mlflow.log_dict(dict(manifest.get("config", {})), "config.json")


def flatten(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys; lists stay whole (as JSON) so a source list is one param."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def param_value(value: Any) -> str:
    """A config value as an MLflow param: JSON for non-strings, cut to what MLflow stores."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return _clipped(text, _PARAM_VALUE_LIMIT)


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
