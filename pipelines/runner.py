"""Runs the selected stages of a pipeline: cache check, execution, atomic publish, lineage.

For every selected stage, in topological order:
  fingerprint known and output finished -> cache hit: a child run tagged as such, no work;
  otherwise -> run the operator into a temp dir, check its counts, publish, manifest last.
Ray is started only when some stage actually has work to do, so a fully cached run is instant.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from infra import tracking
from infra.lineage_repair import ensure_producer_recorded
from infra.ray_runtime import ensure_ray
from infra.settings import RuntimeSettings, default_artifact_location, ray_address, tracking_uri
from operators.stage_io import StageIO, StageResult
from pipelines.dag import Pipeline, Selection
from pipelines.manifest import describe_files
from pipelines.stage import Stage
from pipelines.store import StageStore, open_store
from pipelines.version import code_version

if TYPE_CHECKING:
    from pipelines.object_store import ObjectStageStore

log = logging.getLogger(__name__)


class MissingUpstreamError(RuntimeError):
    """A selected stage needs an upstream output that does not exist for this config."""


class StageContractError(RuntimeError):
    """An operator returned results that break the stage contract (e.g. counts do not add up)."""


@dataclass(frozen=True)
class StageStatus:
    name: str
    fingerprint: str
    status: str  # done | stale | missing
    location: str  # local path or object-store URI of the output


@dataclass(frozen=True)
class StageOutcome:
    name: str
    fingerprint: str
    cache_hit: bool
    run_id: str
    seconds: float
    counts: Mapping[str, int]
    uri: str
    output_dir: Path | None  # local copy; None for an object-store cache hit, which fetches nothing


def fingerprints(pipeline: Pipeline, config: BaseModel) -> dict[str, str]:
    """Every stage's fingerprint under `config`, upstream first."""
    result: dict[str, str] = {}
    for stage in pipeline.stages:
        upstream = {name: result[name] for name in stage.upstream}
        result[stage.name] = stage.fingerprint(_section(config, stage), upstream)
    return result


def stage_statuses(pipeline: Pipeline, config: BaseModel) -> list[StageStatus]:
    store = open_store(_runtime(config))
    statuses = []
    for name, fingerprint in fingerprints(pipeline, config).items():
        if store.is_done(name, fingerprint):
            status = "done"
        elif store.finished_fingerprints(name):
            status = "stale"
        else:
            status = "missing"
        statuses.append(StageStatus(name, fingerprint, status, store.location(name, fingerprint)))
    return statuses


def run_pipeline(
    pipeline: Pipeline,
    config: BaseModel,
    selection: Selection = Selection.ALL,
    stage_name: str | None = None,
    force: bool = False,
) -> list[StageOutcome]:
    runtime = _runtime(config)
    store = open_store(runtime)
    fps = fingerprints(pipeline, config)
    selected = pipeline.select(selection, stage_name)
    _check_upstream_exists(selected, fps, store)

    uri = tracking_uri(runtime)
    tracking.connect(uri, runtime.experiment, default_artifact_location(uri))
    outcomes: list[StageOutcome] = []
    with tracking.pipeline_run(pipeline.name, config.model_dump(mode="json"), code_version()):
        for stage in selected:
            upstream_runs = {name: _producer_run(name, fps[name], store) for name in stage.upstream}
            outcome = _run_stage(pipeline, stage, config, fps, upstream_runs, store, runtime, force)
            outcomes.append(outcome)
            log.info(
                "%-16s %s %s in %.2fs", stage.name, outcome.fingerprint,
                "cached" if outcome.cache_hit else "ran", outcome.seconds,
            )
    return outcomes


def _run_stage(
    pipeline: Pipeline,
    stage: Stage,
    config: BaseModel,
    fps: Mapping[str, str],
    upstream_runs: Mapping[str, str | None],
    store: StageStore | ObjectStageStore,
    runtime: RuntimeSettings,
    force: bool,
) -> StageOutcome:
    started = time.perf_counter()
    fingerprint = fps[stage.name]
    section = _section(config, stage)
    output_uri = store.uri(stage.name, fingerprint)
    with tracking.stage_run(pipeline.name, stage.name) as run_id:
        tracking.log_stage_identity(
            config_section=section.model_dump(mode="json"),
            fingerprint=fingerprint,
            code_version=stage.code_version(),
            upstream={name: (fps[name], upstream_runs[name]) for name in stage.upstream},
            output_uri=output_uri,
        )
        tracking.log_datasets(
            inputs={name: (fps[name], store.uri(name, fps[name])) for name in stage.upstream},
            output=(stage.name, fingerprint, output_uri),
        )
        existing = store.manifest(stage.name, fingerprint)
        if existing is not None and not force:
            # A tracking outage after publish leaves the producing run without its outcome: repair it.
            producer = ensure_producer_recorded(existing, output_uri)
            tracking.log_cache_hit(producer)
            tracking.log_manifest_artifact(existing)
            return StageOutcome(
                stage.name, fingerprint, True, run_id, time.perf_counter() - started,
                existing.get("counts", {}), output_uri, store.local_copy(stage.name, fingerprint),
            )

        ensure_ray(ray_address(runtime))
        manifest, output_dir = _execute(pipeline, stage, section, fps, upstream_runs, store, run_id, tracking_uri(runtime))
        return StageOutcome(
            stage.name, fingerprint, False, run_id, time.perf_counter() - started, manifest["counts"], output_uri,
            output_dir,
        )


def _execute(
    pipeline: Pipeline,
    stage: Stage,
    section: BaseModel,
    fps: Mapping[str, str],
    upstream_runs: Mapping[str, str | None],
    store: StageStore | ObjectStageStore,
    run_id: str,
    uri: str,
) -> tuple[dict[str, Any], Path]:
    """Run the stage into a temp dir and publish it; return its manifest and its local output dir."""
    fingerprint = fps[stage.name]
    inputs = {name: store.local_dir(name, fps[name]) for name in stage.upstream}
    temp = store.new_temp_dir(stage.name, fingerprint)
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="llama2-plots-") as plots:
            result = stage.run(section, StageIO(temp, inputs, Path(plots), tracking_uri=uri, mlflow_run_id=run_id))
            _check_counts(stage, result)
            seconds = time.perf_counter() - started
            files = describe_files(temp, result.file_stats)
            metrics = _stage_metrics(result, files, seconds)
            manifest = {
                "pipeline": pipeline.name,
                "stage": stage.name,
                "fingerprint": fingerprint,
                "code_version": stage.code_version(),
                "package_version": code_version(),
                "config": section.model_dump(mode="json"),
                "upstream": {
                    name: {"fingerprint": fps[name], "mlflow_run_id": upstream_runs[name], "uri": store.uri(name, fps[name])}
                    for name in stage.upstream
                },
                "mlflow_run_id": run_id,
                "started_at": started_at.isoformat(),
                "wall_time_s": round(seconds, 3),
                "unit": result.summary.get("unit", stage.unit),
                "counts": result.counts,
                "metrics": metrics,
                "summary": result.summary,
                "files": files,
            }
            output_dir = store.publish(stage.name, fingerprint, temp, manifest)
            tracking.log_stage_outcome(metrics, manifest, Path(plots), run_id)
    except BaseException:
        store.discard(temp)
        raise
    return manifest, output_dir


def _check_counts(stage: Stage, result: StageResult) -> None:
    counts = result.counts
    missing = {"in", "out", "rejected"} - counts.keys()
    if missing:
        raise StageContractError(f"stage {stage.name} returned counts without {sorted(missing)}")
    if counts["in"] != counts["out"] + counts["rejected"]:
        raise StageContractError(
            f"stage {stage.name}: counts do not add up: in={counts['in']} "
            f"!= out={counts['out']} + rejected={counts['rejected']}"
        )


def _stage_metrics(result: StageResult, files: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    output_bytes = sum(f["bytes"] for f in files)
    metrics = {
        "count_in": result.counts["in"],
        "count_out": result.counts["out"],
        "count_rejected": result.counts["rejected"],
        "wall_time_s": seconds,
        "throughput_in_per_s": result.counts["in"] / seconds if seconds > 0 else 0.0,
        "output_bytes": output_bytes,
        "output_mb_per_s": output_bytes / 1e6 / seconds if seconds > 0 else 0.0,
    }
    metrics.update({k: float(v) for k, v in result.metrics.items()})
    return metrics


def _check_upstream_exists(selected: list[Stage], fps: Mapping[str, str], store: StageStore | ObjectStageStore) -> None:
    chosen = {s.name for s in selected}
    for stage in selected:
        for name in stage.upstream:
            if name not in chosen and not store.is_done(name, fps[name]):
                raise MissingUpstreamError(
                    f"stage {stage.name!r} needs the output of upstream stage {name!r} "
                    f"(fingerprint {fps[name]}), which does not exist for this config; "
                    f"run `--until {name}` first, or `--from {name}`"
                )


def _producer_run(name: str, fingerprint: str, store: StageStore | ObjectStageStore) -> str | None:
    """The MLflow run that produced a finished output (recorded in its manifest)."""
    manifest = store.manifest(name, fingerprint)
    return manifest.get("mlflow_run_id") if manifest else None


def _section(config: BaseModel, stage: Stage) -> BaseModel:
    return getattr(config, stage.config_section)


def _runtime(config: BaseModel) -> RuntimeSettings:
    return getattr(config, "runtime")
