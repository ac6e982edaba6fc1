"""Starts a pipeline's selected stages in DAG order, independent ones at the same time where the cluster
has room for what they ask.

A stage's work runs in Ray (tasks, actors, Ray Train worker groups) and the driver only waits on it, so
two stages in flight cost the driver a thread each. Ray would queue what does not fit, but a worker
group waiting for CPUs another stage holds only idles and times out, so a stage starts only when its
`needs` fit beside the stages running, and never ahead of an earlier ready stage that is waiting for
room (the DAG order is kept, nothing overtakes).

A stage that starts with nothing beside it (nothing else is ready, or nothing else fits) runs on the
calling thread, so a chain of stages runs exactly as a loop over them (Ctrl-C reaches the stage itself). After a stage
fails no other starts; the ones running finish and publish, then the first failure is raised. An
interrupt of the calling thread while stages run beside each other is raised at once, after
`interrupted` was told which were left running (their work areas are never published).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One stage as the scheduler sees it."""

    name: str
    upstream: tuple[str, ...]  # the selected stages it reads; others are done already
    needs: Mapping[str, float] = field(default_factory=dict)  # resources it holds while it runs


class StageFailed(Exception):
    """Carries a stage's error out of the scheduler, with the stage's name."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(stage)
        self.stage, self.error = stage, error


@dataclass
class _Done(Generic[T]):
    name: str
    result: T | None = None
    error: BaseException | None = None


class Scheduler(Generic[T]):
    """`run(job_name)` for every job, each after its upstream, at most `max_parallel` at once, and only
    while the needs of those running fit in `capacity()` (asked when a stage is about to start beside
    others, so a cluster that grows is used)."""

    def __init__(
        self,
        jobs: Sequence[Job],
        run: Callable[[str], T],
        capacity: Callable[[], Mapping[str, float]],
        max_parallel: int,
        before_start: Callable[[str], None] = lambda name: None,
        finished: Callable[[str, T], None] = lambda name, result: None,
        interrupted: Callable[[list[str]], None] = lambda names: None,
    ):
        self.jobs = list(jobs)
        self._run, self._capacity, self.max_parallel = run, capacity, max_parallel
        self._before_start, self._finished, self._interrupted = before_start, finished, interrupted
        self._done_queue: queue.Queue[_Done[T]] = queue.Queue()
        self._running: dict[str, Job] = {}
        self._results: dict[str, T] = {}
        self._failure: StageFailed | None = None

    def run_all(self) -> list[T]:
        """The results in the jobs' order; raises StageFailed for the first stage that failed."""
        waiting = list(self.jobs)
        while waiting or self._running:
            startable = [] if self._failure else self._startable(waiting)
            if len(startable) == 1 and not self._running:  # nothing could start beside it: no thread
                job = startable[0]
                waiting.remove(job)
                self._before_start(job.name)
                self._record(self._call(job))
                continue
            for job in startable:
                waiting.remove(job)
                self._before_start(job.name)
                self._start(job)
            if not self._running:
                break  # a failure left the rest unstartable
            self._wait_for_one()
        if self._failure:
            raise self._failure
        return [self._results[job.name] for job in self.jobs]

    def _ready(self, waiting: list[Job]) -> list[Job]:
        pending = {job.name for job in waiting} | set(self._running)
        return [job for job in waiting if not pending.intersection(job.upstream)]

    def _startable(self, waiting: list[Job]) -> list[Job]:
        """The ready jobs, in order, up to the first that does not fit beside those running (and those
        started before it in this pass)."""
        chosen: list[Job] = []
        held = [job.needs for job in self._running.values()]
        for job in self._ready(waiting):
            if len(self._running) + len(chosen) >= self.max_parallel:
                break
            if held and not _fits(job.needs, held, self._capacity()):
                break
            chosen.append(job)
            held.append(job.needs)
        return chosen

    def _start(self, job: Job) -> None:
        self._running[job.name] = job
        log.info("%s starts beside %s", job.name, ", ".join(n for n in self._running if n != job.name) or "nothing")
        threading.Thread(target=lambda: self._done_queue.put(self._call(job)), name=f"stage-{job.name}",
                         daemon=True).start()

    def _call(self, job: Job) -> _Done[T]:
        try:
            return _Done(job.name, result=self._run(job.name))
        except BaseException as error:  # handed to the scheduling thread, which raises it
            return _Done(job.name, error=error)

    def _wait_for_one(self) -> None:
        try:
            done = self._done_queue.get()
        except BaseException:
            self._interrupted(list(self._running))
            raise
        del self._running[done.name]
        self._record(done)

    def _record(self, done: _Done[T]) -> None:
        if done.error is not None:
            if isinstance(done.error, KeyboardInterrupt) and not self._running:
                raise done.error  # an interrupt of a stage on this thread ends the run as it did before
            if self._failure is None:
                self._failure = StageFailed(done.name, done.error)
                if self._running:
                    log.error("stage %s failed; no other stage starts, waiting for %s to finish and publish",
                              done.name, ", ".join(self._running))
            else:
                log.error("stage %s failed too: %s", done.name, done.error)
            return
        self._results[done.name] = done.result
        self._finished(done.name, done.result)


def _fits(needs: Mapping[str, float], held: list[Mapping[str, float]], capacity: Mapping[str, float]) -> bool:
    for resource, amount in needs.items():
        if amount and sum(h.get(resource, 0.0) for h in held) + amount > capacity.get(resource, 0.0):
            return False
    return True
