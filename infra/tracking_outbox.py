"""What a stage logs to MLflow goes through a queue and a thread: the stage never waits long on the server.

    tracker.log_metrics(...)  ->  Outbox (in memory)  ->  sender thread  ->  MLflow
                                     a failed send is kept and tried again after 1, 2, 4 ... 60 s
    tracker.hand_back(10)     ->  one more try now, then what is still undelivered, as a Backlog

A call returns once what it gave is delivered, as a direct call to MLflow would (a crash right
after loses nothing), but after 5 s at most, and at once while the server does not take values.

Rank 0 of a training loop logs every few steps: with MLflow's client called in the loop, a server
that went away failed the stage, or stalled it for minutes of the client's retries. MLflow 3.17's
own asynchronous logging (`log_batch(synchronous=False)`, `MLFLOW_ENABLE_ASYNC_LOGGING`) cannot
take this place: a batch that still fails after the HTTP client's retries is logged as an error
and dropped, never sent again when the server is back, and its flush has no deadline.

A Backlog is what the caller keeps: the runner writes it into the stage's manifest and logs it
with the outcome once the server answers, or the next run's lineage repair does
(infra/lineage_repair.py). Metric values keep their own step and time, so one sent twice is stored
once. What cannot wait that way (an artifact, values dropped for room, a request the server
answered with a refusal, which sent again would be refused again) is named in `lost`.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

MetricRow = tuple[str, float, int, int]  # name, value, timestamp (ms), step

BATCH_ENTITIES, BATCH_PARAMS, BATCH_TAGS = 1000, 100, 100  # MLflow's limits for one log_batch
KEPT_METRIC_VALUES = 20_000  # beyond this the oldest are dropped: a manifest carries the backlog
FIRST_PAUSE_S, LONGEST_PAUSE_S = 1.0, 60.0
AT_EXIT_S = 5.0  # a process that ends without handing back gives its sender this long
DELIVERY_WAIT_S = 5.0  # how long a call waits for its delivery, while the server keeps up


@dataclass
class Backlog:
    """Records a tracker could not deliver: metric values, params and tags to log later, and what
    cannot be logged later, in words."""

    metrics: list[MetricRow] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.sendable or bool(self.lost)

    @property
    def sendable(self) -> bool:
        return bool(self.metrics or self.params or self.tags)

    def split(self) -> tuple[Backlog, Backlog]:
        """(what one log_batch request takes, within MLflow's limits; the rest, with `lost`)."""
        params = dict(list(self.params.items())[:BATCH_PARAMS])
        tags = dict(list(self.tags.items())[:BATCH_TAGS])
        room = BATCH_ENTITIES - len(params) - len(tags)
        rest = Backlog(self.metrics[room:], {k: v for k, v in self.params.items() if k not in params},
                       {k: v for k, v in self.tags.items() if k not in tags}, self.lost)
        return Backlog(self.metrics[:room], params, tags), rest

    def describe(self) -> str:
        """'24 metric values (train/loss, train/lr), 1 tag; lost: artifact plots/a.png'"""
        names = sorted({row[0] for row in self.metrics})
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        held = [f"{_count(len(self.metrics), 'metric value')} ({shown})" if self.metrics else "",
                _count(len(self.params), "param"), _count(len(self.tags), "tag")]
        text = ", ".join(part for part in held if part)
        if self.lost:
            text += ("; " if text else "") + "lost: " + ", ".join(self.lost)
        return text

    def as_json(self) -> dict[str, Any]:
        return {"metrics": [list(row) for row in self.metrics], "params": self.params, "tags": self.tags,
                "lost": self.lost}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Backlog:
        return cls([(str(n), float(v), int(t), int(s)) for n, v, t, s in data.get("metrics", [])],
                   dict(data.get("params", {})), dict(data.get("tags", {})), list(data.get("lost", [])))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}" if n else ""


SendBatch = Callable[[Backlog], None]
SendArtifact = Callable[[Path, str], None]


class Outbox:
    """Records waiting for one MLflow run, and the daemon thread that sends them in order.

    Without a sender (`send_batch` None: the run could not be started) it only keeps them.
    """

    def __init__(self, send_batch: SendBatch | None, send_artifact: SendArtifact | None, run: str):
        self._send_batch, self._send_artifact, self._run = send_batch, send_artifact, run
        self._changed = threading.Condition()
        self._pending = Backlog()
        self._artifacts: list[tuple[Path, str]] = []  # (local file, artifact file)
        self._in_flight: Backlog | tuple[Path, str] | None = None
        self._generation = 0  # a hand-back takes what is in flight: its late result no longer counts
        self._dropped = 0
        self._failure: str | None = None  # the last send's error while the server does not take them
        self._attempts = 0
        self._retry_at = 0.0
        self._pause = FIRST_PAUSE_S
        self._hurry = False
        self._sending_since = 0.0
        self._thread: threading.Thread | None = None

    def put(self, metrics: Iterable[MetricRow] = (), params: Mapping[str, str] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        with self._changed:
            self._pending.metrics.extend(metrics)
            self._pending.params.update(params or {})
            self._pending.tags.update(tags or {})
            self._make_room()
            self._wake()
            self._keep_up()

    def put_artifact(self, local_file: Path, artifact_file: str) -> None:
        with self._changed:
            self._artifacts.append((local_file, artifact_file))
            self._wake()
            self._keep_up()

    def take_back(self, backlog: Backlog) -> None:
        """Records another tracker of the same run handed back (a Ray Train worker's), to send from here."""
        with self._changed:
            self._pending.lost.extend(backlog.lost)
        self.put(backlog.metrics, backlog.params, backlog.tags)

    def hand_back(self, timeout_s: float) -> Backlog:
        """Try once more now, wait until everything is delivered, a try made after this call failed,
        or `timeout_s`; return what is left (and no longer send it)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            if self._thread is not None:
                asked_at, self._hurry = self._attempts, True
                self._changed.notify_all()
                while self._has_work() and time.monotonic() < deadline:
                    if self._attempts > asked_at and self._failure is not None:
                        break
                    self._changed.wait(deadline - time.monotonic())
            left = self._take_everything()
        if left:
            log.warning("MLflow run %s: could not deliver %s; they are kept to be recorded later", self._run,
                        left.describe())
        return left

    def _wake(self) -> None:
        if self._send_batch is None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_loop, name=f"mlflow-outbox-{self._run}", daemon=True)
            self._thread.start()
            atexit.register(self._hand_back_at_exit)
        self._changed.notify_all()

    def _keep_up(self) -> None:
        """Wait until everything given is delivered, but DELIVERY_WAIT_S at most, and not at all while
        sends fail or the one in flight is already that slow."""
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while self._thread is not None and self._has_work() and self._failure is None:
            now = time.monotonic()
            if now >= deadline or (self._in_flight is not None and now - self._sending_since > DELIVERY_WAIT_S):
                return
            self._changed.wait(deadline - now)

    def _has_work(self) -> bool:
        return self._waiting() or self._in_flight is not None

    def _make_room(self) -> None:
        over = len(self._pending.metrics) - KEPT_METRIC_VALUES
        if over > 0:
            del self._pending.metrics[:over]
            self._dropped += over

    def _send_loop(self) -> None:
        while True:
            with self._changed:
                while not (self._waiting() and (self._hurry or time.monotonic() >= self._retry_at)):
                    self._changed.wait(max(0.0, self._retry_at - time.monotonic()) if self._waiting() else None)
                job, generation = self._next_job(), self._generation
            error = self._send(job)
            with self._changed:
                self._attempts += 1
                if generation == self._generation:
                    self._settle(job, error)
                self._changed.notify_all()

    def _waiting(self) -> bool:
        return self._pending.sendable or bool(self._artifacts)

    def _next_job(self) -> Backlog | tuple[Path, str]:
        self._sending_since = time.monotonic()
        if self._pending.sendable:
            self._in_flight, self._pending = self._pending.split()
        else:
            self._in_flight = self._artifacts.pop(0)
        return self._in_flight

    def _send(self, job: Backlog | tuple[Path, str]) -> Exception | None:
        try:
            if isinstance(job, Backlog):
                self._send_batch(job)
            else:
                self._send_artifact(*job)
        except Exception as err:  # MLflow raises many types for a server that is gone
            return err
        if not isinstance(job, Backlog):
            shutil.rmtree(job[0].parent, ignore_errors=True)
        return None

    def _settle(self, job: Backlog | tuple[Path, str], error: Exception | None) -> None:
        self._in_flight = None
        if error is None or _refused(error):
            if self._failure is not None:
                log.info("MLflow run %s: the tracking server takes values again", self._run)
            self._failure, self._pause, self._retry_at = None, FIRST_PAUSE_S, 0.0
            if error is not None:  # sent again, it would be refused again
                what = job.describe() if isinstance(job, Backlog) else f"artifact {job[1]}"
                self._pending.lost.append(f"{what} (refused: {first_line(error)})")
                log.warning("MLflow run %s refused %s: %s", self._run, what, first_line(error))
            return
        if self._failure is None:
            log.warning("MLflow run %s: the tracking server does not take values (%s); they wait and are sent "
                        "again, the work goes on", self._run, first_line(error))
        self._failure, self._hurry = first_line(error), False
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(2 * self._pause, LONGEST_PAUSE_S)
        if isinstance(job, Backlog):
            self._pending.metrics[:0] = job.metrics
            self._pending.params = {**job.params, **self._pending.params}
            self._pending.tags = {**job.tags, **self._pending.tags}
            self._make_room()
        else:
            self._artifacts.insert(0, job)

    def _take_everything(self) -> Backlog:
        left, self._pending = self._pending, Backlog()
        in_flight, self._in_flight = self._in_flight, None
        if isinstance(in_flight, Backlog):  # perhaps delivered after all: a value stored twice is stored once
            left.metrics[:0] = in_flight.metrics
            left.params = {**in_flight.params, **left.params}
            left.tags = {**in_flight.tags, **left.tags}
        artifacts = ([in_flight] if isinstance(in_flight, tuple) else []) + self._artifacts
        self._artifacts = []
        for local_file, artifact_file in artifacts:
            left.lost.append(f"artifact {artifact_file}")
            shutil.rmtree(local_file.parent, ignore_errors=True)
        if self._dropped:
            left.lost.append(f"{self._dropped:,} earliest metric values (at most {KEPT_METRIC_VALUES:,} are kept)")
            self._dropped = 0
        self._generation += 1
        self._hurry = False
        return left

    def _hand_back_at_exit(self) -> None:
        with self._changed:
            busy = self._has_work()
        if busy:
            self.hand_back(AT_EXIT_S)  # what is left is named in the log: nobody is left to keep it


def _refused(error: Exception) -> bool:
    """The server answered and refused the request itself (a param changed, a run deleted): no outage."""
    status = error.get_http_status_code() if isinstance(error, MlflowException) else 500
    return 400 <= status < 500 and status not in (408, 429)


def first_line(err: BaseException) -> str:
    """'Type: the first line of its message', cut to a log line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
