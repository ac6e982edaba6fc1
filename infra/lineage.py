"""Reading lineage back from MLflow: from one stage run, or a registered model version, to every run upstream of it.

Works from the tags written by `infra/tracking.py` (and the model registry's run links) alone,
so it answers for any run in the tracking store, also one whose artifact store is gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from infra.run_datasets import INPUT
from infra.settings import RuntimeContext
from infra.tracking import (
    TAG_CACHE_HIT,
    TAG_CONFIG,
    TAG_FINGERPRINT,
    TAG_OUTPUT_URI,
    TAG_PRODUCED_BY,
    TAG_STAGE,
    TAG_UPSTREAM_RUN,
    TAG_UPSTREAM_STAGES,
    connect,
    flatten,
)

MODELS_SCHEME = "models:/"


class LineageNotFoundError(LookupError):
    """No run matches what the user asked for."""


@dataclass(frozen=True)
class LineageNode:
    stage: str
    run_id: str
    fingerprint: str
    output_uri: str
    params: dict[str, str]  # the whole config section, dotted keys
    upstream: dict[str, str | None]  # upstream stage -> its producing run id
    start_time_ms: int
    files: tuple[str, ...] = ()  # the files it read from outside the store: name, digest, size, modified


def open_tracking(context: RuntimeContext) -> tuple[MlflowClient, str]:
    """A client on the run's tracking store and the experiment's id; the store must already exist
    (reading lineage never creates an empty `mlflow.db` where the user happens to stand)."""
    uri = context.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LineageNotFoundError(f"no MLflow store at {uri}: run a pipeline here first, or set MLFLOW_TRACKING_URI")
    experiment_id = connect(uri, context.experiment, context.artifact_location)
    return MlflowClient(uri), experiment_id


def producing_run_id(client: MlflowClient, experiment_ids: list[str], stage: str, fingerprint: str | None) -> str:
    """The run that produced `stage`'s output (with `fingerprint`, if given), newest first."""
    clauses = [f"tags.`{TAG_STAGE}` = '{stage}'", f"tags.`{TAG_CACHE_HIT}` = 'false'", "attributes.status = 'FINISHED'"]
    if fingerprint:
        clauses.append(f"tags.`{TAG_FINGERPRINT}` = '{fingerprint}'")
    runs = client.search_runs(experiment_ids, " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        which = f" with fingerprint {fingerprint}" if fingerprint else ""
        raise LineageNotFoundError(f"no finished run of stage {stage!r}{which} in the tracking store")
    return runs[0].info.run_id


def model_version(client: MlflowClient, uri: str) -> ModelVersion:
    """The registered model version behind `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    ref = uri.removeprefix(MODELS_SCHEME)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = ref.rpartition("/")
        if not name or not version.isdigit():
            raise LineageNotFoundError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
        return client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise LineageNotFoundError(f"no registered model version {uri} in the tracking store") from None
        raise


def lineage(client: MlflowClient, run_id: str) -> list[LineageNode]:
    """`run_id`'s stage and all its upstream stages, upstream first (a cache hit is followed to its producer)."""
    nodes: dict[str, LineageNode] = {}
    order: list[str] = []

    def visit(current: str) -> None:
        if current in nodes:
            return
        node = _node(_producer(client, current))
        nodes[current] = node
        for upstream_run in node.upstream.values():
            if upstream_run:
                visit(upstream_run)
        order.append(current)

    visit(run_id)
    return [nodes[r] for r in order]


def _producer(client: MlflowClient, run_id: str) -> Run:
    run = _get_run(client, run_id)
    tags = run.data.tags
    if TAG_STAGE not in tags:
        raise LineageNotFoundError(f"run {run_id} is not a llama2 stage run (no {TAG_STAGE} tag)")
    produced_by = tags.get(TAG_PRODUCED_BY)
    if tags.get(TAG_CACHE_HIT) == "true" and produced_by and produced_by != run_id:
        return _get_run(client, produced_by)
    return run


def _get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise LineageNotFoundError(f"no run {run_id!r} in the tracking store, and no stage of that name") from None
        raise


def _node(run: Run) -> LineageNode:
    tags = run.data.tags
    upstream_names = [n for n in tags.get(TAG_UPSTREAM_STAGES, "").split(",") if n]
    return LineageNode(
        stage=tags[TAG_STAGE],
        run_id=run.info.run_id,
        fingerprint=tags.get(TAG_FINGERPRINT, "?"),
        output_uri=tags.get(TAG_OUTPUT_URI, "?"),
        params=_section(run),
        upstream={name: tags.get(TAG_UPSTREAM_RUN.format(name=name)) for name in upstream_names},
        start_time_ms=run.info.start_time,
        files=_outside_files(run, {tags[TAG_STAGE], *upstream_names}),
    )


def _outside_files(run: Run, stages: set[str]) -> tuple[str, ...]:
    """The run's input datasets that are files, not stage outputs (infra/run_datasets.py logs both), as
    `name  digest=...  bytes=...  modified=...`."""
    found = []
    for dataset_input in run.inputs.dataset_inputs if run.inputs else ():
        dataset = dataset_input.dataset
        context = {t.key: t.value for t in dataset_input.tags}.get(MLFLOW_DATASET_CONTEXT)
        if context != INPUT or dataset.name in stages:
            continue
        profile = json.loads(dataset.profile) if dataset.profile else {}
        found.append("  ".join([dataset.name, f"digest={dataset.digest}",
                                *(f"{key}={value}" for key, value in sorted(profile.items()))]))
    return tuple(sorted(found))


def _section(run: Run) -> dict[str, str]:
    """The run's whole config section (the `llama2.config` tag), or its params for runs that predate it."""
    logged = run.data.tags.get(TAG_CONFIG)
    try:
        section = json.loads(logged) if logged else None
    except json.JSONDecodeError:  # cut at MLflow's tag limit
        section = None
    if not isinstance(section, dict):
        return dict(sorted(run.data.params.items()))
    return {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in sorted(flatten(section).items())}
