"""Recording stage runs in MLflow: one parent run per invocation, one child run per stage.

Tag names are the lineage schema that `infra/lineage.py` reads back; keep the two in step.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

log = logging.getLogger(__name__)

TAG_PREFIX = "llama2."
TAG_PIPELINE = "llama2.pipeline"
TAG_STAGE = "llama2.stage"
TAG_FINGERPRINT = "llama2.fingerprint"
TAG_CODE_VERSION = "llama2.code_version"
TAG_CACHE_HIT = "llama2.cache_hit"
TAG_PRODUCED_BY = "llama2.produced_by_run"
TAG_OUTPUT_URI = "llama2.output_uri"
TAG_UPSTREAM_FINGERPRINT = "llama2.upstream.{name}.fingerprint"
TAG_UPSTREAM_RUN = "llama2.upstream.{name}.run_id"
TAG_UPSTREAM_STAGES = "llama2.upstream"
TAG_INPUT_ROLES = "llama2.inputs"  # role=stage, ...: which upstream output fed which role of the operator
_PARAM_VALUE_LIMIT = 6000
PROBE_TIMEOUT_S = 5.0


class MlflowTracker:
    """The `operators.stage_io.Tracker` of one stage's MLflow run.

    It holds only the tracking URI and the run id, so it pickles to Ray tasks and Ray Train
    workers; the client is made where it is first used.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], state["run_id"])

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(name, float(value), now, step or 0) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, param_value(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached; the message names the URI."""


def connect(uri: str, experiment: str, artifact_location: str | None) -> str:
    """Point MLflow at `uri`, make sure `experiment` exists, and return its id.

    A tracking server is probed first (`<uri>/health`, a few seconds at most): MLflow's own
    client retries an unreachable server for minutes, and a run must fail before any stage
    writes output, with a message naming the server.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    probe_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, artifact_location=artifact_location
        )
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
    health = uri.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            urllib.request.urlopen(health, timeout=max(0.5, min(2.0, remaining))).close()
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


@contextmanager
def pipeline_run(pipeline: str, config: Mapping[str, Any], code_version: str) -> Iterator[str]:
    """The parent run of one invocation; the full config is attached as `config.json`."""
    with mlflow.start_run(run_name=pipeline, tags={TAG_PIPELINE: pipeline, TAG_CODE_VERSION: code_version}) as run:
        mlflow.log_dict(dict(config), "config.json")
        yield run.info.run_id


@contextmanager
def stage_run(pipeline: str, stage: str) -> Iterator[str]:
    """A child run of the active pipeline run."""
    with mlflow.start_run(run_name=stage, nested=True, tags={TAG_PIPELINE: pipeline, TAG_STAGE: stage}) as run:
        yield run.info.run_id


def log_stage_identity(
    *,
    config_section: Mapping[str, Any],
    fingerprint: str,
    code_version: str,
    upstream: Mapping[str, tuple[str, str | None]],
    roles: Mapping[str, str],
    output_uri: str,
) -> None:
    """Params = the stage's config section; tags = fingerprint, code version, upstream links by stage and role."""
    mlflow.log_params({k: param_value(v) for k, v in flatten(config_section).items()})
    tags = {
        TAG_FINGERPRINT: fingerprint,
        TAG_CODE_VERSION: code_version,
        TAG_OUTPUT_URI: output_uri,
        TAG_UPSTREAM_STAGES: ",".join(upstream),
        TAG_INPUT_ROLES: ",".join(f"{role}={stage}" for role, stage in sorted(roles.items())),
    }
    for name, (upstream_fingerprint, upstream_run) in upstream.items():
        tags[TAG_UPSTREAM_FINGERPRINT.format(name=name)] = upstream_fingerprint
        if upstream_run:
            tags[TAG_UPSTREAM_RUN.format(name=name)] = upstream_run
    mlflow.set_tags(tags)


def log_datasets(inputs: Mapping[str, tuple[str, str]], output: tuple[str, str, str]) -> None:
    """Upstream outputs as `input` datasets and this stage's output as an `output` dataset.

    Each is a MetaDataset whose digest is the producing stage's fingerprint and whose source is
    the output directory's URI, so the MLflow UI links runs through the data they share.
    """
    for name, (fingerprint, uri) in inputs.items():
        mlflow.log_input(stage_dataset(name, fingerprint, uri), context="input")
    name, fingerprint, uri = output
    mlflow.log_input(stage_dataset(name, fingerprint, uri), context="output")


def log_cache_hit(produced_by: str | None) -> None:
    mlflow.set_tags({TAG_CACHE_HIT: "true", TAG_PRODUCED_BY: produced_by or "unknown"})


def log_stage_outcome(metrics: Mapping[str, float], manifest: Mapping[str, Any], run_id: str) -> None:
    mlflow.set_tags({TAG_CACHE_HIT: "false", TAG_PRODUCED_BY: run_id})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    log_manifest_artifact(manifest)


def log_manifest_artifact(manifest: Mapping[str, Any]) -> None:
    mlflow.log_dict(dict(manifest), "manifest.json")


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
    return text if len(text) <= _PARAM_VALUE_LIMIT else text[: _PARAM_VALUE_LIMIT - 3] + "..."


def stage_dataset(name: str, fingerprint: str, uri: str) -> MetaDataset:
    """A stage output as an MLflow dataset: digest = fingerprint, source = the output's URI."""
    # MLflow creates its artifact dataset sources (local, s3, ...) at run time, so they are
    # resolved by URI; a local URI matches two of them ("" and "file" schemes), which it warns about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(uri)
    return MetaDataset(source=source, name=name, digest=fingerprint)


def dataset_input(name: str, fingerprint: str, uri: str, context: str) -> DatasetInput:
    """`stage_dataset` as the entity `MlflowClient.log_inputs` takes, for runs that are not active."""
    # _to_mlflow_entity is how mlflow.log_input itself turns a Dataset into an entity.
    entity = stage_dataset(name, fingerprint, uri)._to_mlflow_entity()
    return DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])
