"""Repairing the lineage that a tracking outage left behind.

The runner publishes a stage's output (manifest last) before it logs the outcome to MLflow, so
when the tracking server goes away mid-run the output is complete and will be a cache hit, but
the run named in its manifest never recorded the outcome:

    manifest.mlflow_run_id -> run RUNNING, KILLED or FAILED, no `llama2.cache_hit=false`    (server died)
                           -> no such run                                                  (store replaced)
                           -> none: the server was lost before the stage's run started    (server died)

The next invocation that hits that cache calls `ensure_producer_recorded`, which completes the
run from the manifest, or records a new run marked as a repair when there is none, and returns the
run id that lineage should point at. Either way it logs the manifest's `tracking_backlog`: what
the stage's tracker could not deliver while it ran (infra/tracking_outbox.py). A run left RUNNING
has been ended as KILLED by then, its owner being gone (infra/run_owner.py); the repair finishes
it. A warning names the stage either way, so a repair is never silent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from infra import run_datasets, tracking
from infra.tracking_outbox import Backlog

log = logging.getLogger(__name__)

TAG_REPAIRED = "llama2.repaired"
TAG_REPAIRS_RUN = "llama2.repairs_run"  # on a new run: the id the manifest names but the store lacks


def ensure_producer_recorded(manifest: Mapping[str, Any], output_uri: str) -> str:
    """The run that produced `manifest`'s output, with its outcome recorded (repaired if needed).

    Call it inside the stage's child run, as the runner does for a cache hit; the repair goes to
    the same tracking store and experiment.
    """
    client = MlflowClient()
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("ensure_producer_recorded must run inside a stage's MLflow run")
    original = manifest.get("mlflow_run_id")
    run = _get_run(client, original)
    if run is not None and run.info.status == "FINISHED" and run.data.tags.get(tracking.TAG_CACHE_HIT) == "false":
        return original

    stage = manifest["stage"]
    if run is not None:
        log.warning("stage %s: run %s never recorded its outcome (status %s; tracking server down mid-run?); "
                    "recording it now from the manifest", stage, original, run.info.status)
        record_outcome(client, original, manifest)
        return original

    earlier = _earlier_repair(client, active.info.experiment_id, stage, manifest["fingerprint"], original)
    if earlier:
        return earlier
    parent = client.get_run(active.info.run_id).data.tags.get(MLFLOW_PARENT_RUN_ID)
    repaired = _new_producer_run(client, active.info.experiment_id, parent, manifest, output_uri, original)
    log.warning("stage %s: run %s named in the manifest is not in the tracking store; "
                "recorded the output's lineage as run %s", stage, original, repaired)
    return repaired


def record_outcome(client: MlflowClient, run_id: str, manifest: Mapping[str, Any]) -> None:
    """What `tracking.log_stage_outcome` would have logged, from the manifest, then FINISHED: also what
    the stage's tracker could not deliver while it ran (its step metrics, with their own steps)."""
    backlog = Backlog.from_json(manifest.get(tracking.BACKLOG_KEY, {}))
    note = (f"**{manifest['stage']}**: {tracking.counts_text(manifest)} (recorded from the manifest by a later run: "
            f"the tracking store was lost mid-run){tracking.late_text(backlog)}")
    gap = [RunTag(tracking.TAG_TRACKING_GAP, backlog.describe())] if backlog else []
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in manifest.get("metrics", {}).items()],
        tags=[RunTag(tracking.TAG_CACHE_HIT, "false"), RunTag(tracking.TAG_PRODUCED_BY, run_id),
              RunTag(TAG_REPAIRED, "true"), RunTag(tracking.TAG_NOTE, note), *gap],
    )
    if backlog:
        tracking.log_backlog(client, run_id, backlog)
    client.log_dict(run_id, dict(manifest), "manifest.json")
    client.set_terminated(run_id, "FINISHED")


def _new_producer_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str | None,
    manifest: Mapping[str, Any],
    output_uri: str,
    original: str | None,
) -> str:
    upstream = manifest.get("upstream", {})
    tags = {
        MLFLOW_RUN_NAME: f"{manifest['stage']} (lineage repair)",
        tracking.TAG_PIPELINE: manifest.get("pipeline", ""),
        tracking.TAG_STAGE: manifest["stage"],
        tracking.TAG_FINGERPRINT: manifest["fingerprint"],
        tracking.TAG_CODE_HASH: manifest.get("code_hash", ""),
        tracking.TAG_OUTPUT_URI: output_uri,
        tracking.TAG_UPSTREAM_STAGES: ",".join(upstream),
        tracking.TAG_CONFIG: json.dumps(manifest.get("config", {}), sort_keys=True),
        TAG_REPAIRS_RUN: original or "none",
    }
    for name, link in upstream.items():
        tags[tracking.TAG_UPSTREAM_FINGERPRINT.format(name=name)] = link["fingerprint"]
        upstream_run = _upstream_run_here(client, experiment_id, name, link)
        if upstream_run:
            tags[tracking.TAG_UPSTREAM_RUN.format(name=name)] = upstream_run
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    datasets = [run_datasets.as_input(run_datasets.stage_dataset(name, link["fingerprint"], link["uri"]),
                                      run_datasets.INPUT) for name, link in upstream.items()]
    datasets.append(run_datasets.as_input(
        run_datasets.stage_dataset(manifest["stage"], manifest["fingerprint"], output_uri, manifest), run_datasets.OUTPUT))
    client.log_inputs(run_id, datasets)
    record_outcome(client, run_id, manifest)
    return run_id


def _upstream_run_here(client: MlflowClient, experiment_id: str, name: str, link: Mapping[str, Any]) -> str | None:
    """The upstream's producing run in this store: the one its manifest names, or its repair run
    (made just before, as stages are visited upstream first)."""
    named = link.get("mlflow_run_id")
    if _get_run(client, named) is not None:
        return named
    return _earlier_repair(client, experiment_id, name, link["fingerprint"], named)


def _earlier_repair(client: MlflowClient, experiment_id: str, stage: str, fingerprint: str, original: str | None) -> str | None:
    """A repair run an earlier invocation already recorded for the same missing run."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_REPAIRS_RUN}` = '{original or 'none'}' and tags.`{tracking.TAG_STAGE}` = '{stage}' "
        f"and tags.`{tracking.TAG_FINGERPRINT}` = '{fingerprint}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def _get_run(client: MlflowClient, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
