"""Runs the selected stages of a pipeline: checks first, then cache, execution, atomic publish, lineage.

Before anything starts, every fingerprint is computed (which resolves and checks the files
read from outside the store), the selection's missing upstream outputs and the resources the
stages ask for are checked; a problem there is the user's and nothing has been created yet.
Then the run claims (pipelines/store/protocol.py `Claim`) every output it will produce,
exclusively, and every other output those stages read, shared, all before its first stage starts:
a run that would replace an output another live run produces, reads or has read into a manifest's
lineage is refused at once in one line, and so is one that would read an output another run is
replacing. Then every selected stage, each after the stages it reads, independent ones at the same
time where the cluster has room for both (pipelines/scheduler.py):
  output finished under its fingerprint -> cache hit: a child run tagged as such, no work;
  otherwise -> run the operator in a work area, check its stats, publish, manifest last.
"Finished" means a readable manifest whose files all have the size and modification time it
records (a stat per file); a published output changed since is a miss, said in one log line, and
the run makes it again (`llama2 verify` compares the bytes with the manifest's sha256).
Ray is started only when some stage actually has work to do, so a fully cached run is instant.

MLflow sees the invocation as a parent run and each stage as a child run (infra/run_lifecycle.py): the
child's duration is the stage's own work (Ray starts before it, timed on the parent), a failure
or Ctrl-C is recorded on both, and a stage that `registers` a model makes its `model/` folder a
version of that registered model (infra/model_registry.py) once its run has ended. Every MLflow
call goes through the invocation's TrackingLink (infra/tracking_link.py): a tracking server lost
mid-run ends the record, not the work; the stages left run and publish, the run ends with
`TrackingLost`, and the next run's cache hits record them (infra/lineage_repair.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from infra import run_datasets, run_lifecycle, tracking
from infra.lineage_repair import ensure_producer_recorded
from infra.model_registry import TAG_MODEL_VERSION, register_stage_model
from infra.ray_runtime import ensure_ray
from infra.run_owner import end_runs_of_gone_owners
from infra.settings import RuntimeContext
from infra.tracking_link import TrackingLink, TrackingLost
from operators.stage_io import StageIO, StageStats
from pipelines.dag import Pipeline, Selection
from pipelines.disk_full import reported_as_disk_full
from pipelines.manifest import describe_files
from pipelines.resources import check_resources, cluster_capacity, stage_needs
from pipelines.scheduler import Job, Scheduler, StageFailed
from pipelines.stage import Stage
from pipelines.staleness import why_it_runs
from pipelines.stats_check import StageContractError, check_stats, stage_metrics
from pipelines.store import Claim, StageStore, open_store
from pipelines.version import code_version

log = logging.getLogger(__name__)

TAG_WARNING = "llama2.warning"


class MissingUpstreamError(RuntimeError):
    """A selected stage needs an upstream output that does not exist for this config."""


@dataclass(frozen=True)
class StageStatus:
    name: str
    fingerprint: str
    status: str  # done | changed (published, then a file changed: `problem` says how) | stale | missing
    location: str  # local path or object-store URI of the output
    problem: str | None = None
    reason: str | None = None  # why a stage that is not done would run (pipelines/staleness.py)


@dataclass(frozen=True)
class StageOutcome:
    name: str
    fingerprint: str
    cache_hit: bool
    run_id: str | None  # None: the tracking server was lost before the stage's run started
    seconds: float
    counts: Mapping[str, int]
    uri: str
    output_dir: Path | None  # local copy; None for an object-store cache hit, which fetches nothing


class Outputs:
    """Where each node's output is: this pipeline's store, or (for another pipeline's output it reads)
    that pipeline's store. Every store access of the runner goes through here."""

    def __init__(self, pipeline: Pipeline, context: RuntimeContext):
        self.pipeline = pipeline
        self.fingerprints = pipeline.fingerprints()
        self._stores = {pipeline.name: open_store(context, pipeline.name)}
        for external in pipeline.external:
            self._stores.setdefault(external.pipeline, open_store(context, external.pipeline))
        self._claims: dict[str, Claim] = {}

    def store(self, name: str) -> tuple[StageStore, str]:
        """The store holding node `name` and the stage name it has there."""
        external = self.pipeline.external_output(name)
        if external is None:
            return self._stores[self.pipeline.name], name
        return self._stores[external.pipeline], external.stage

    def manifest(self, name: str) -> dict[str, Any] | None:
        store, stage = self.store(name)
        return store.manifest(stage, self.fingerprints[name])

    def problem(self, name: str) -> str | None:
        store, stage = self.store(name)
        return store.problem(stage, self.fingerprints[name])

    def uri(self, name: str) -> str:
        store, stage = self.store(name)
        return store.uri(stage, self.fingerprints[name])

    def local_dir(self, name: str) -> Path:
        store, stage = self.store(name)
        return store.local_dir(stage, self.fingerprints[name])

    @contextmanager
    def claimed(self, produced: Sequence[Stage]) -> Iterator[None]:
        """Claim every output of `produced` and every other output they read, all before the first stage
        starts (a refusal releases what was taken); release them all when the run ends."""
        names = [s.name for s in produced]
        read = [up for s in produced for up in s.upstream if up not in names]
        try:
            for name in names:
                self.claim(name, exclusive=True)
            for name in dict.fromkeys(read):
                self.claim(name, exclusive=False)
            yield
        finally:
            for held in self._claims.values():
                held.release()
            self._claims.clear()

    def claim(self, name: str, exclusive: bool) -> Claim:
        """This run's claim on `name`'s output, taken now if it does not hold one strong enough (an output
        that was done when the run started and no longer is gets made, which needs an exclusive claim)."""
        held = self._claims.get(name)
        if held is None or (exclusive and not held.exclusive):
            if held is not None:
                self._claims.pop(name).release()
            store, stage = self.store(name)
            held = self._claims[name] = store.claim(stage, self.fingerprints[name], exclusive)
        return held


def stage_statuses(pipeline: Pipeline, context: RuntimeContext) -> list[StageStatus]:
    store = open_store(context, pipeline.name)
    statuses = []
    fingerprints = pipeline.fingerprints()
    for name in pipeline.names:
        fingerprint = fingerprints[name]
        problem = store.problem(name, fingerprint)
        if problem:
            status = "changed"
        elif store.is_done(name, fingerprint):
            status = "done"
        elif store.finished_fingerprints(name):
            status = "stale"
        else:
            status = "missing"
        reason = None if status == "done" else problem or why_it_runs(pipeline.stage(name), fingerprints, store)
        statuses.append(StageStatus(name, fingerprint, status, store.location(name, fingerprint), problem, reason))
    return statuses


def run_pipeline(
    pipeline: Pipeline,
    context: RuntimeContext,
    selection: Selection = Selection.ALL,
    stage_name: str | None = None,
    force: bool = False,
) -> list[StageOutcome]:
    outputs = Outputs(pipeline, context)
    selected = pipeline.select(selection, stage_name)
    _check_upstream_exists(pipeline, selected, outputs)
    to_run = [s for s in selected if force or outputs.manifest(s.name) is None]
    check_resources(to_run, context)
    with outputs.claimed(to_run):
        for stage in to_run:
            problem = None if force else outputs.problem(stage.name)
            if problem:
                log.warning("%s: its published output changed, so it is not done and is made again: %s", stage.name,
                            problem)
        return _run_claimed(pipeline, context, selection, stage_name, force, outputs, selected,
                            {s.name for s in to_run})


def _run_claimed(
    pipeline: Pipeline,
    context: RuntimeContext,
    selection: Selection,
    stage_name: str | None,
    force: bool,
    outputs: Outputs,
    selected: list[Stage],
    to_run: set[str],
) -> list[StageOutcome]:
    experiment_id = tracking.connect(context.tracking_uri, context.experiment, context.artifact_location)
    link = TrackingLink(context.tracking_uri)
    link.attempt("ending the runs of processes that are gone", end_runs_of_gone_owners, experiment_id)
    config = tracking.redacted(pipeline.config.model_dump(mode="json"))
    invocation = run_lifecycle.Invocation(
        pipeline=pipeline.name, selection=selection.value if stage_name is None else f"{selection.value} {stage_name}",
        force=force, stages=tuple(s.name for s in selected), store=tracking.redact(context.store_location),
        notes=pipeline.notes,
    )
    for note in pipeline.notes:
        log.warning("%s", note)
    with run_lifecycle.pipeline_run(invocation, config, code_version(), link) as record:
        outcomes = _run_stages(pipeline, context, force, outputs, selected, to_run, record, experiment_id)
    if link.lost:
        raise TrackingLost(_lost_message(link, outcomes, context, pipeline), outcomes)
    log.info("MLflow: %s", tracking.ui_link(context.tracking_uri, experiment_id, record.run_id))
    return outcomes


def _run_stages(
    pipeline: Pipeline,
    context: RuntimeContext,
    force: bool,
    outputs: Outputs,
    selected: list[Stage],
    to_run: set[str],
    record: run_lifecycle.PipelineRecord,
    experiment_id: str,
) -> list[StageOutcome]:
    """Every selected stage through the scheduler (pipelines/scheduler.py): a stage with work to do
    (`to_run`, decided with the claims) holds the resources its config asks for; a cache hit holds none."""
    chosen = {s.name for s in selected}
    jobs = [Job(s.name, tuple(up for up in s.upstream if up in chosen), stage_needs(s) if s.name in to_run else {})
            for s in selected]

    def before_start(name: str) -> None:
        record.current = name
        if name in to_run:
            _start_ray(context, record)  # here, once, before any stage's thread could race to start it

    def run_one(name: str) -> StageOutcome:
        stage = pipeline.stage(name)
        upstream_runs = {up: (outputs.manifest(up) or {}).get("mlflow_run_id") for up in stage.upstream}
        return _run_stage(pipeline, stage, outputs, upstream_runs, context, force, record, experiment_id)

    def finished(name: str, outcome: StageOutcome) -> None:
        record.stage_finished(name, outcome.cache_hit)
        log.info("%-16s %s %s in %.2fs", name, outcome.fingerprint, "cached" if outcome.cache_hit else "ran",
                 outcome.seconds)

    def interrupted(running: list[str]) -> None:
        record.current = " and ".join(running)
        run_lifecycle.end_interrupted_stages(record, running)

    scheduler = Scheduler(jobs, run_one, lambda: cluster_capacity(context), context.parallel_stages, before_start,
                          finished, interrupted)
    try:
        return scheduler.run_all()
    except StageFailed as failed:
        record.current, error = failed.stage, failed.error
    raise error  # outside the handler: the stage's own error and traceback, not the scheduler's wrapper


def _lost_message(
    link: TrackingLink, outcomes: list[StageOutcome], context: RuntimeContext, pipeline: Pipeline
) -> str:
    ran = [o.name for o in outcomes if not o.cache_hit]
    return (f"{link.describe()}; the run went on without it: {len(ran)} stage(s) ran and published "
            f"({', '.join(ran) or 'none'}), {len(outcomes) - len(ran)} cached, under "
            f"{tracking.redact(context.store_location)}/{pipeline.name}. MLflow lacks their record until "
            f"`llama2 run {pipeline.name}` runs again with the server back: its cache hits record them")


def _run_stage(
    pipeline: Pipeline,
    stage: Stage,
    outputs: Outputs,
    upstream_runs: Mapping[str, str | None],
    context: RuntimeContext,
    force: bool,
    record: run_lifecycle.PipelineRecord,
    experiment_id: str,
) -> StageOutcome:
    started = time.perf_counter()
    fingerprint = outputs.fingerprints[stage.name]
    store, _ = outputs.store(stage.name)
    output_uri = store.uri(stage.name, fingerprint)
    existing = None if force else store.manifest(stage.name, fingerprint)
    if existing is None:
        _start_ray(context, record)  # before the stage's run, whose duration is then the stage's own work
    with run_lifecycle.stage_run(record, stage.name, stage.description) as run_id:
        record.link.attempt(f"recording stage {stage.name}'s identity", _record_stage_start, stage, outputs,
                            upstream_runs, output_uri, run_id)
        if existing is not None:
            producer = record.link.attempt(f"recording stage {stage.name}'s cache hit", _record_cache_hit, stage,
                                           existing, output_uri, run_id)
            made = existing
            outcome = StageOutcome(
                stage.name, fingerprint, True, run_id, time.perf_counter() - started,
                existing.get("counts", {}), output_uri, store.local_copy(stage.name, fingerprint),
            )
        else:
            tracker = tracking.MlflowTracker(context.tracking_uri, run_id)
            with reported_as_disk_full(stage.name, context.store_root / pipeline.name / stage.name):
                manifest, output_dir, publish_s = _execute(pipeline, stage, outputs, upstream_runs, run_id, tracker)
            warning = _warn_on_heavy_rejection(stage, manifest, context)
            record.link.attempt(f"recording stage {stage.name}'s outcome", _record_outcome, stage, manifest,
                                publish_s, output_uri, run_id, {TAG_WARNING: warning} if warning else {})
            made, producer = manifest, run_id
            outcome = StageOutcome(
                stage.name, fingerprint, False, run_id, time.perf_counter() - started, manifest["counts"], output_uri,
                output_dir,
            )
    if stage.registers and producer:
        record.link.attempt(f"registering stage {stage.name}'s model", _register_model, stage, outcome, made, producer,
                            context, record, experiment_id)
    return outcome


def _record_stage_start(stage: Stage, outputs: Outputs, upstream_runs: Mapping[str, str | None], output_uri: str,
                        run_id: str) -> None:
    fps = outputs.fingerprints
    tracking.log_stage_identity(
        config=stage.config,
        fingerprint=fps[stage.name],
        code_hash=stage.code_hash(),
        upstream={name: (fps[name], upstream_runs[name]) for name in stage.upstream},
        roles=dict(stage.inputs),
        output_uri=output_uri,
    )
    run_datasets.log_stage_inputs(
        run_id,
        inputs={name: (fps[name], outputs.uri(name), outputs.manifest(name)) for name in stage.upstream},
        outside_identity=stage.outside_inputs(stage.config) if stage.outside_inputs else None,
    )


def _record_cache_hit(stage: Stage, manifest: Mapping[str, Any], output_uri: str, run_id: str) -> str:
    """Tag the stage's run as a cache hit of the run that made the output, and return that run's id."""
    # A tracking outage after publish leaves the producing run without its outcome: repair it.
    producer = ensure_producer_recorded(manifest, output_uri)
    tracking.log_cache_hit(producer, stage.description, manifest)
    tracking.log_manifest_artifact(manifest)
    run_datasets.log_stage_output(run_id, stage.name, manifest["fingerprint"], output_uri, manifest)
    return producer


def _record_outcome(stage: Stage, manifest: Mapping[str, Any], publish_s: float, output_uri: str, run_id: str,
                    tags: Mapping[str, str]) -> None:
    tracking.log_stage_outcome({**manifest["metrics"], "time/publish_s": publish_s}, manifest, run_id,
                               stage.description, tags)
    run_datasets.log_stage_output(run_id, stage.name, manifest["fingerprint"], output_uri, manifest)


def _start_ray(context: RuntimeContext, record: run_lifecycle.PipelineRecord) -> None:
    """Start (or join) Ray once per invocation; its start-up time is a metric of the parent run."""
    import ray

    if ray.is_initialized():
        return
    started = time.perf_counter()
    ensure_ray(context.ray_address)
    record.log_metric("time/ray_startup_s", time.perf_counter() - started)


def _register_model(
    stage: Stage,
    outcome: StageOutcome,
    manifest: Mapping[str, Any],
    producer: str,
    context: RuntimeContext,
    record: run_lifecycle.PipelineRecord,
    experiment_id: str,
) -> None:
    """The stage's `model/` as a version of its registered model, made by the producing run (also on
    a cache hit, so an output whose registration was interrupted gets it on the next run)."""
    version = register_stage_model(
        stage.registers, run_id=producer, experiment_id=experiment_id, manifest=manifest, output_uri=outcome.uri,
        local_output=outcome.output_dir, durable=context.remote is not None, description=stage.description,
    )
    uri = f"models:/{version.name}/{version.version}"
    record.registered.append(f"{version.name} v{version.version}")
    for run_id in dict.fromkeys((producer, outcome.run_id)):
        tracking.append_to_note(run_id, f"registered as `{uri}`")
    if outcome.run_id != producer:
        tracking.set_run_tags(outcome.run_id, {TAG_MODEL_VERSION: uri})


def _execute(
    pipeline: Pipeline,
    stage: Stage,
    outputs: Outputs,
    upstream_runs: Mapping[str, str | None],
    run_id: str | None,
    tracker: tracking.MlflowTracker,
) -> tuple[dict[str, Any], Path, float]:
    """Run the stage in a locked work area and publish it; return its manifest, its local output dir and
    the seconds that checking and publishing took after the stage function returned."""
    fingerprint = outputs.fingerprints[stage.name]
    inputs = {role: outputs.local_dir(up) for role, up in stage.inputs.items()}
    upstream_manifests = {role: outputs.manifest(up) or {} for role, up in stage.inputs.items()}  # before it reads
    store, _ = outputs.store(stage.name)
    work = store.begin(outputs.claim(stage.name, exclusive=True))
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    try:
        io = StageIO(
            output_dir=work.output, inputs=inputs, stage=stage.name, fingerprint=fingerprint,
            scratch_dir=work.scratch, producers=dict(stage.inputs), tracker=tracker,
        )
        stats = stage.run(stage.config, io)
        seconds = time.perf_counter() - started
        backlog = tracker.hand_back(tracking.HAND_BACK_S)  # what MLflow did not take waits in the manifest
        files = describe_files(work.output, stats.file_stats)
        check_stats(stage.name, stats, files, upstream_manifests)
        manifest = _manifest(pipeline, stage, outputs, upstream_runs, run_id, stats, files, started_at, seconds)
        manifest["schema"] = run_datasets.table_schemas(work.output)  # folder -> columns, for the MLflow dataset
        if backlog:
            manifest[tracking.BACKLOG_KEY] = backlog.as_json()
        output_dir = store.publish(work, manifest)
    except BaseException:
        store.abandon(work)
        raise
    return manifest, output_dir, time.perf_counter() - started - seconds


def _manifest(
    pipeline: Pipeline,
    stage: Stage,
    outputs: Outputs,
    upstream_runs: Mapping[str, str | None],
    run_id: str | None,
    stats: StageStats,
    files: list[dict[str, Any]],
    started_at: datetime,
    seconds: float,
) -> dict[str, Any]:
    fps = outputs.fingerprints
    return {
        "pipeline": pipeline.name,
        "stage": stage.name,
        "section": stage.config_section,
        "fingerprint": fps[stage.name],
        "code_hash": stage.code_hash(),
        "package_version": code_version(),
        "config": stage.config.model_dump(mode="json"),
        "inputs": dict(stage.inputs),
        "upstream": {
            name: {"fingerprint": fps[name], "mlflow_run_id": upstream_runs[name], "uri": outputs.uri(name)}
            for name in stage.upstream
        },
        "mlflow_run_id": run_id,
        "started_at": started_at.isoformat(),
        "wall_time_s": round(seconds, 3),
        "unit": stats.unit,
        "counts": stats.counts,
        "rejected_reasons": dict(sorted(stats.rejected.items())),
        "planned_rejects": sorted(stats.planned),
        "metrics": stage_metrics(stats, files, seconds),
        "summary": stats.summary,
        "files": files,
    }


def _warn_on_heavy_rejection(stage: Stage, manifest: Mapping[str, Any], context: RuntimeContext) -> str | None:
    """Log a loud warning when the stage rejected too much of its input, and return it for its run's tags."""
    counts = manifest["counts"]
    planned = set(manifest["planned_rejects"])
    unplanned = sum(n for reason, n in manifest["rejected_reasons"].items() if reason not in planned)
    if not counts["in"] or unplanned / counts["in"] <= context.reject_warning_share:
        return None
    reasons = {r: n for r, n in manifest["rejected_reasons"].items() if r not in planned}
    message = (f"stage {stage.name} rejected {unplanned / counts['in']:.0%} of its input ({unplanned} of "
               f"{counts['in']} {manifest['unit']}; more than runtime.reject_warning_share="
               f"{context.reject_warning_share}): {reasons}. Check its input and its config before relying on the output.")
    log.warning("!" * 8 + " " + message)
    return message


def _check_upstream_exists(pipeline: Pipeline, selected: list[Stage], outputs: Outputs) -> None:
    chosen = {s.name for s in selected}
    for stage in selected:
        for name in stage.upstream:
            if name in chosen or outputs.manifest(name) is not None:
                continue
            fingerprint = outputs.fingerprints[name]
            problem = outputs.problem(name)
            changed = f"whose published output changed ({problem})" if problem else None
            external = pipeline.external_output(name)
            if external is not None:
                raise MissingUpstreamError(
                    f"stage {stage.name!r} reads the {external.pipeline} pipeline's {external.stage!r} output "
                    f"(fingerprint {fingerprint}), {changed or 'which has not been made with that config'}; "
                    f"`{external.command}` makes it"
                )
            raise MissingUpstreamError(
                f"stage {stage.name!r} needs the output of upstream stage {name!r} (fingerprint {fingerprint}), "
                f"{changed or 'which has not been made with this config'}; `llama2 run {pipeline.name} --until "
                f"{stage.name}` makes it and everything else it needs (finished stages are reused)"
            )


__all__ = ["MissingUpstreamError", "StageContractError", "StageOutcome", "StageStatus", "run_pipeline",
           "stage_statuses"]
