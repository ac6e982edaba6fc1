"""Two runs of one pipeline at once: a run claims every output it will produce and every other output
those stages read before its first stage starts, so it never replaces an output another live run
produces or reads, and every manifest's `upstream` names the outputs that stage actually read.

The first run is a real second process (its own Ray, its own MLflow store) held inside its `keep`
stage until the test lets it go; the second runs in the test's process meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operators.stage_io import StageIO, StageStats
from pipelines.dag import Pipeline, Selection
from pipelines.manifest import MANIFEST_NAME
from pipelines.runner import run_pipeline
from pipelines.stage import Stage
from pipelines.store import StageBusyError
from tests.pipelines.test_runner import KeepConfig, ToyConfig, context, join_all, keep_long, write_lines

REPO = Path(__file__).resolve().parents[2]
HOLD, STARTED = Path("keep.hold"), Path("keep.started")  # in the working directory both runs share


def held_keep(config: KeepConfig, io: StageIO) -> StageStats:
    """keep_long, held while `keep.hold` exists (after saying so in `keep.started`)."""
    if HOLD.exists():
        STARTED.touch()
        deadline = time.monotonic() + 300
        while HOLD.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never let the held run go")
            time.sleep(0.05)
    return keep_long(config, io)


def held() -> Pipeline:
    config = ToyConfig()
    return Pipeline("held", (
        Stage("source", write_lines, config.source),
        Stage("keep", held_keep, config.keep, inputs={"lines": "source"}),
        Stage("join", join_all, config.join, inputs={"lines": "keep"}),
    ), config)


def run_held_in_another_process(selection: str, stage: str | None) -> None:
    """The first run's entry point (`python -c`): a forced run of `held`."""
    run_pipeline(held(), context(ToyConfig()), Selection(selection), stage, force=True)


def start_first_run(workdir: Path, selection: Selection, stage: str | None = None) -> subprocess.Popen:
    HOLD.touch()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'first.db'}"}
    code = (f"from tests.pipelines.test_concurrent_runs import run_held_in_another_process as run; "
            f"run({selection.value!r}, {stage!r})")
    first = subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env,
                             stdout=subprocess.DEVNULL, stderr=(workdir / "first.log").open("w"))
    deadline = time.monotonic() + 240
    while not STARTED.exists():
        assert first.poll() is None and time.monotonic() < deadline, (workdir / "first.log").read_text()
        time.sleep(0.1)
    return first


def finish(first: subprocess.Popen, workdir: Path) -> None:
    HOLD.unlink()
    assert first.wait(timeout=240) == 0, (workdir / "first.log").read_text()


def manifests(workdir: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in (workdir / "artifacts" / "held").glob(f"*/*/{MANIFEST_NAME}")}


def assert_read_what_is_published(workdir: Path, stages: list[str]) -> None:
    """Each of these stages' manifests names, as its upstream, the run whose output is published now."""
    published = manifests(workdir)
    for stage in stages:
        for name, read in published[stage]["upstream"].items():
            assert read["mlflow_run_id"] == published[name]["mlflow_run_id"], (
                f"{stage} read {name} of run {read['mlflow_run_id']}, but run {published[name]['mlflow_run_id']}'s "
                "output is published")


@pytest.mark.slow
def test_a_second_forced_run_is_refused_before_it_replaces_anything(workdir: Path) -> None:
    run_pipeline(held(), context(ToyConfig()))
    first = start_first_run(workdir, Selection.ALL)
    try:
        with pytest.raises(StageBusyError) as refused:
            run_pipeline(held(), context(ToyConfig()), force=True)
    finally:
        finish(first, workdir)
    assert_read_what_is_published(workdir, ["keep", "join"])
    assert "another llama2 run is producing source" in str(refused.value)  # its first claim: before anything ran


@pytest.mark.slow
def test_an_output_a_live_run_reads_is_not_replaced_under_it(workdir: Path) -> None:
    run_pipeline(held(), context(ToyConfig()))
    first = start_first_run(workdir, Selection.ONLY, "keep")  # reads source
    try:
        with pytest.raises(StageBusyError) as refused:
            run_pipeline(held(), context(ToyConfig()), Selection.ONLY, "source", force=True)
    finally:
        finish(first, workdir)
    assert_read_what_is_published(workdir, ["keep"])  # join's still names the keep output the first run replaced
    assert "another llama2 run is reading source" in str(refused.value)
