"""The stage scheduler: independent stages together where their resources fit, DAG order kept, a failure
stops new starts but lets the running ones finish."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping

import pytest

from pipelines.scheduler import Job, Scheduler, StageFailed

TWO_CPUS = {"CPU": 2.0}


class Recorder:
    """Runs each job as `work[name]()` (or nothing) and notes starts, ends and the most in flight."""

    def __init__(self, work: Mapping[str, Callable[[], None]] | None = None):
        self.work = dict(work or {})
        self.events: list[str] = []
        self.threads: dict[str, threading.Thread] = {}
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        with self._lock:
            self.events.append(f"start {name}")
            self.threads[name] = threading.current_thread()
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.work.get(name, lambda: time.sleep(0.05))()
        finally:
            with self._lock:
                self.in_flight -= 1
                self.events.append(f"end {name}")
        return f"{name} done"


def schedule(jobs: list[Job], recorder: Recorder, max_parallel: int = 4, capacity=TWO_CPUS, **hooks) -> list[str]:
    return Scheduler(jobs, recorder, lambda: capacity, max_parallel, **hooks).run_all()


def both_at_once() -> Callable[[], None]:
    """Work that only finishes when a second job runs it at the same time."""
    barrier = threading.Barrier(2, timeout=10)
    return barrier.wait


def test_independent_stages_that_fit_run_at_the_same_time_and_results_keep_dag_order() -> None:
    meet = both_at_once()
    recorder = Recorder({"rm_helpful": meet, "rm_safe": meet})
    jobs = [Job("sft", (), {"CPU": 2}), Job("rm_helpful", ("sft",), {"CPU": 1}), Job("rm_safe", ("sft",), {"CPU": 1}),
            Job("rs", ("rm_helpful", "rm_safe"), {"CPU": 2})]
    assert schedule(jobs, recorder) == ["sft done", "rm_helpful done", "rm_safe done", "rs done"]
    assert recorder.most_in_flight == 2
    assert recorder.events[:1] == ["start sft"] and recorder.events[-2:] == ["start rs", "end rs"]
    assert recorder.events.index("end sft") < recorder.events.index("start rm_helpful")
    assert recorder.threads["sft"] is threading.main_thread()  # alone: no thread of its own
    assert recorder.threads["rm_helpful"] is not threading.main_thread()


def test_stages_that_do_not_fit_beside_each_other_run_one_after_the_other() -> None:
    recorder = Recorder()
    jobs = [Job("a", (), {"CPU": 2}), Job("b", (), {"CPU": 1}), Job("c", (), {"CPU": 2})]
    schedule(jobs, recorder)
    assert recorder.most_in_flight == 1
    assert recorder.events == ["start a", "end a", "start b", "end b", "start c", "end c"]
    assert all(thread is threading.main_thread() for thread in recorder.threads.values())


def test_a_ready_stage_waiting_for_room_is_not_overtaken() -> None:
    """b (2 CPUs) waits for a; c (1 CPU) would fit beside a but starts only with or after b."""
    recorder = Recorder({"a": lambda: time.sleep(0.2)})
    jobs = [Job("a", (), {"CPU": 1}), Job("b", (), {"CPU": 2}), Job("c", (), {"CPU": 1})]
    schedule(jobs, recorder, capacity={"CPU": 2.0})
    assert recorder.events.index("start b") > recorder.events.index("end a")
    assert recorder.events.index("start c") > recorder.events.index("start b")


def test_stages_asking_for_nothing_run_beside_anything_up_to_max_parallel() -> None:
    recorder = Recorder()
    schedule([Job(name, ()) for name in "abcdef"], recorder, max_parallel=3)
    assert recorder.most_in_flight <= 3
    recorder = Recorder()
    schedule([Job(name, ()) for name in "abc"], recorder, max_parallel=1)
    assert recorder.most_in_flight == 1


def test_a_failure_stops_new_starts_lets_the_running_stage_finish_and_names_the_stage() -> None:
    started = threading.Event()

    def fail() -> None:
        started.wait(10)
        raise ValueError("broken reward data")

    def slow() -> None:
        started.set()
        time.sleep(0.3)

    recorder, finished = Recorder({"rm_helpful": fail, "rm_safe": slow}), []
    jobs = [Job("rm_helpful", (), {"CPU": 1}), Job("rm_safe", (), {"CPU": 1}), Job("late", (), {"CPU": 1}),
            Job("rs", ("rm_helpful", "rm_safe"))]
    with pytest.raises(StageFailed) as failed:
        schedule(jobs, recorder, finished=lambda name, result: finished.append(name))
    assert failed.value.stage == "rm_helpful" and str(failed.value.error) == "broken reward data"
    assert finished == ["rm_safe"]  # it finished (and a runner publishes it) after the other failed
    assert "start late" not in recorder.events and "start rs" not in recorder.events


def test_an_interrupt_while_stages_run_together_names_them_and_is_raised() -> None:
    release = threading.Event()
    recorder, told = Recorder({"a": lambda: release.wait(10), "b": lambda: release.wait(10)}), []

    def interrupt_when_both_run(name: str) -> None:
        if name == "b":
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test's Ray left
    try:
        with pytest.raises(KeyboardInterrupt):
            schedule([Job("a", ()), Job("b", ())], recorder, before_start=interrupt_when_both_run,
                     interrupted=lambda names: told.extend(sorted(names)))
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
    assert told == ["a", "b"]
