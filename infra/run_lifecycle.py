"""The MLflow runs of one invocation and how each ends: the parent, a child per stage, and each
finished, FAILED (the error's type and first line as tags and in its note) or KILLED by Ctrl-C or
SIGTERM (tagged `llama2.interrupted` and `llama2.signal`). What the runs record in between is
`infra/tracking.py`.

Every call goes through the invocation's TrackingLink (infra/tracking_link.py): once the server is
lost, no run is started or ended here; a run this process started is forgotten locally and ended
by a later `llama2 run`, which finds its owner gone (each run names it: infra/run_owner.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient, fluent

from infra import signals
from infra.run_owner import owner_tags
from infra.tracking import TAG_CODE_VERSION, TAG_NOTE, TAG_PIPELINE, TAG_STAGE, stage_note_prefix
from infra.tracking_link import TrackingLink

log = logging.getLogger(__name__)

TAG_ERROR = "llama2.error"  # the first line of the error's message
TAG_ERROR_TYPE = "llama2.error_type"  # the exception's class, e.g. StageContractError
TAG_FAILED_STAGE = "llama2.failed_stage"  # on the parent run
TAG_INTERRUPTED = "llama2.interrupted"
TAG_SIGNAL = "llama2.signal"  # SIGINT or SIGTERM, beside llama2.interrupted
_ERROR_LIMIT = 500


@dataclass(frozen=True)
class Invocation:
    """What one `llama2 run` was asked to do: the parent run's name, params and note say it."""

    pipeline: str
    selection: str  # "all", "only filter", "from dedup", "until tokenize"
    force: bool
    stages: tuple[str, ...]  # the selected stages, in order
    store: str  # where the outputs go (redacted)
    notes: tuple[str, ...] = ()  # what the config leaves out that a reader of the run should know

    def run_name(self, started: datetime) -> str:
        return f"{self.pipeline} · {started:%Y-%m-%d %H:%M}"

    def what(self) -> str:
        chosen = "all stages" if self.selection == "all" else f"--{self.selection}"
        forced = ", --force" if self.force else ""
        return f"`llama2 run {self.pipeline}` ({chosen}{forced}; {len(self.stages)} selected)"


@dataclass
class PipelineRecord:
    """The parent run of one invocation, filled in as its stages finish."""

    run_id: str | None  # None: the tracking server was lost before it could start
    invocation: Invocation
    link: TrackingLink
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    current: str | None = None  # the stage(s) in progress, named if the invocation fails there
    stage_runs: dict[str, str] = field(default_factory=dict)  # stage -> its run, while it runs
    registered: list[str] = field(default_factory=list)  # "llama2-base v3"

    def stage_finished(self, stage: str, cache_hit: bool) -> None:
        (self.cached if cache_hit else self.ran).append(stage)
        self.current = None

    def log_metric(self, name: str, value: float) -> None:
        if self.run_id:
            self.link.attempt(f"logging the pipeline's {name}", MlflowClient().log_metric, self.run_id, name, value)

    def note(self, outcome: str) -> str:
        counts = f"{len(self.ran)} ran, {len(self.cached)} cached"
        registered = f"; registered {', '.join(self.registered)}" if self.registered else ""
        notes = "".join(f" Note: {note}" for note in self.invocation.notes)
        return f"{self.invocation.what()}: {outcome} — {counts}{registered}; outputs under {self.invocation.store}.{notes}"


@contextmanager
def pipeline_run(
    invocation: Invocation, config: Mapping[str, Any], code_version: str, link: TrackingLink
) -> Iterator[PipelineRecord]:
    """The parent run of one invocation: named after the pipeline and the time, with the selection as
    params, the whole config as `config.yaml` (to read) and `config.json` (to load)."""
    started = datetime.now()
    tags = {TAG_PIPELINE: invocation.pipeline, TAG_CODE_VERSION: code_version,
            TAG_NOTE: f"{invocation.what()}: running", **owner_tags()}
    run = link.attempt("starting the pipeline's run", mlflow.start_run, run_name=invocation.run_name(started),
                       tags=tags)
    record = PipelineRecord(run.info.run_id if run else None, invocation, link)
    status = RunStatus.to_string(RunStatus.FINISHED)
    try:
        link.attempt("logging the pipeline's params and config", _log_invocation, invocation, config)
        yield record
        link.attempt("writing the pipeline's note", mlflow.set_tag, TAG_NOTE, record.note("finished"))
    except BaseException as err:
        status = _record_failure(err, record.note, link, where=record.current)
        raise
    finally:
        if run:
            now = int(time.time() * 1000)
            counts = {"ran": len(record.ran), "cached": len(record.cached), "failed": int(status == "FAILED")}
            metrics = [Metric(f"stages/{k}", float(n), now, 0) for k, n in counts.items()]
            try:
                link.attempt("logging the stage counts", MlflowClient().log_batch, record.run_id, metrics=metrics)
            except Exception as logging_error:  # never hide the error that ended the run
                log.warning("could not record the stage counts in MLflow: %s", logging_error)
            _end_run(link, status)


def _log_invocation(invocation: Invocation, config: Mapping[str, Any]) -> None:
    mlflow.log_params({"selection": invocation.selection, "force": str(invocation.force).lower(),
                       "stages": ",".join(invocation.stages), "store": invocation.store})
    mlflow.log_text(_config_yaml(invocation, config), "config.yaml")
    mlflow.log_dict(dict(config), "config.json")


def _config_yaml(invocation: Invocation, config: Mapping[str, Any]) -> str:
    header = (f"# The effective config of {invocation.what()}.\n"
              f"# `llama2 run {invocation.pipeline} --config config.yaml` repeats it; `runtime` says where it ran.\n")
    return header + yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


@contextmanager
def stage_run(record: PipelineRecord, stage: str, description: str) -> Iterator[str | None]:
    """A child run of the pipeline's run, or None when the tracking server is lost; a failure or an
    interrupt is recorded on it."""
    note = stage_note_prefix(stage, description)
    tags = {TAG_PIPELINE: record.invocation.pipeline, TAG_STAGE: stage, TAG_NOTE: f"{note} — running", **owner_tags()}
    # The parent by id: a stage running beside others has a thread, and MLflow's active run, of its own.
    run = record.link.attempt(f"starting stage {stage}'s run", mlflow.start_run, run_name=stage, nested=True,
                              parent_run_id=record.run_id, tags=tags)
    status = RunStatus.to_string(RunStatus.FINISHED)
    if run:
        record.stage_runs[stage] = run.info.run_id
    try:
        yield run.info.run_id if run else None
    except BaseException as err:
        status = _record_failure(err, lambda outcome: f"{note} — {outcome}", record.link)
        raise
    finally:
        if run:
            record.stage_runs.pop(stage, None)
            _end_run(record.link, status)


def end_interrupted_stages(record: PipelineRecord, stages: list[str]) -> None:
    """End as KILLED, from the thread Ctrl-C reached, the runs of stages running on threads of their own
    (their work is never published: the process ends with the interrupt)."""
    client = MlflowClient()
    for stage in stages:
        run_id = record.stage_runs.get(stage)
        if run_id is None:
            continue
        try:
            note = client.get_run(run_id).data.tags.get(TAG_NOTE, stage).removesuffix(" — running")
            tags = {TAG_INTERRUPTED: "true", TAG_SIGNAL: signals.received(),
                    TAG_NOTE: f"{note} — INTERRUPTED beside other stages; nothing unfinished was published"}
            record.link.attempt(f"recording that stage {stage} was interrupted", client.log_batch, run_id,
                                tags=[RunTag(k, v) for k, v in tags.items()])
            record.link.attempt(f"ending stage {stage}'s run", client.set_terminated, run_id,
                                RunStatus.to_string(RunStatus.KILLED))
        except Exception as logging_error:  # never hide the interrupt
            log.warning("could not record stage %s's interrupt in MLflow: %s", stage, logging_error)


def _end_run(link: TrackingLink, status: str) -> None:
    """End the innermost active run. Without a server it is only forgotten here (MLflow has no call
    for that), and stays RUNNING until a later run finds its owner gone (infra/run_owner.py)."""
    if link.lost:
        fluent._active_run_stack.get().pop()
    else:
        link.attempt("ending a run", mlflow.end_run, status)  # MLflow forgets the run before it asks the server


def _record_failure(
    err: BaseException, note: Callable[[str], str], link: TrackingLink, where: str | None = None
) -> str:
    """Tag the active run with why it stopped, put it in its note, and return its final status."""
    stage = f" in stage {where}" if where else ""
    if isinstance(err, KeyboardInterrupt):
        name = signals.received()
        tags = {TAG_INTERRUPTED: "true", TAG_SIGNAL: name,
                TAG_NOTE: note(f"INTERRUPTED{stage} ({'Ctrl-C' if name == 'SIGINT' else name}); nothing unfinished "
                               "was published: run the same command again to resume")}
        status = RunStatus.to_string(RunStatus.KILLED)
    else:
        kind, message = error_summary(err)
        tags = {TAG_ERROR_TYPE: kind, TAG_ERROR: message, TAG_NOTE: note(f"FAILED{stage}: {kind}: {message}")}
        status = RunStatus.to_string(RunStatus.FAILED)
    if where:
        tags[TAG_FAILED_STAGE] = where
    try:
        link.attempt("recording why the run stopped", mlflow.set_tags, tags)
    except Exception as logging_error:  # never hide the error that ended the run
        log.warning("could not record the failure in MLflow: %s", logging_error)
    return status


def error_summary(err: BaseException) -> tuple[str, str]:
    """(exception type, first line of its message) of the error behind `err`: a Ray task's or a Ray
    Train worker's own exception rather than the wrapper that carried it to the driver."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None)  # ray.exceptions.RayTaskError
        if not isinstance(inner, BaseException):
            failures = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: rank -> exception
            inner = failures[min(failures)] if failures else getattr(err, "controller_failure", None)
        if not isinstance(inner, BaseException):
            break
        err = inner
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = lines[0] if lines else "(no message)"
    if len(message) > _ERROR_LIMIT:
        message = message[: _ERROR_LIMIT - 3] + "..."
    return type(err).__name__, message
