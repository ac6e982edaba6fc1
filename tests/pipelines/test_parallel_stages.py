"""The runner runs independent stages at the same time: each gets its own MLflow child run under the
invocation's run, and the failure of one is named while the other's output is published."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from infra.settings import RuntimeSettings, resolve_runtime
from operators.stage_io import StageIO, StageStats
from pipelines.dag import Pipeline
from pipelines.runner import run_pipeline, stage_statuses
from pipelines.stage import Stage


class BranchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail: bool = False
    cpus: float = 0  # what the stage asks the cluster for

    def required_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}


class DiamondConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    left: BranchConfig = Field(default_factory=BranchConfig)
    right: BranchConfig = Field(default_factory=BranchConfig)


def write_source(config: BaseModel, io: StageIO) -> StageStats:
    (io.output_dir / "words.txt").write_text("alpha beta gamma")
    return StageStats(unit="files", count_in=1, count_out=1)


def diamond(config: DiamondConfig, meet: Callable[[], object]) -> Pipeline:
    """source -> left, right -> both; left and right call `meet` first (e.g. a barrier they only pass together)."""

    def branch(side: str):
        def run(branch_config: BranchConfig, io: StageIO) -> StageStats:
            if branch_config.fail:
                meet()
                raise RuntimeError(f"{side} broke")
            meet()
            text = (io.input("source") / "words.txt").read_text()
            (io.output_dir / "words.txt").write_text(text.upper() if side == "left" else text[::-1])
            return StageStats(unit="files", count_in=1, count_out=1)
        run.__name__ = f"branch_{side}"
        return run

    def both(_: BaseModel, io: StageIO) -> StageStats:
        words = [(io.input(side) / "words.txt").read_text() for side in ("left", "right")]
        (io.output_dir / "words.txt").write_text("\n".join(words))
        return StageStats(unit="files", count_in=2, count_out=1, rejected={"joined": 1})

    return Pipeline("diamond", (
        Stage("source", write_source, config.left.model_copy()),
        Stage("left", branch("left"), config.left, inputs={"source": "source"}),
        Stage("right", branch("right"), config.right, inputs={"source": "source"}),
        Stage("both", both, config.right.model_copy(), inputs={"left": "left", "right": "right"}),
    ), config)


def test_independent_stages_run_together_each_a_child_of_the_invocations_run(workdir: Path) -> None:
    config = DiamondConfig()
    outcomes = run_pipeline(diamond(config, threading.Barrier(2, timeout=20).wait), resolve_runtime(config.runtime))
    assert [o.name for o in outcomes] == ["source", "left", "right", "both"]
    assert (outcomes[-1].output_dir / "words.txt").read_text() == "ALPHA BETA GAMMA\nammag ateb ahpla"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = {o.name: client.get_run(o.run_id) for o in outcomes}
    parents = {run.data.tags["mlflow.parentRunId"] for run in runs.values()}
    assert len(parents) == 1 and all(run.info.status == "FINISHED" for run in runs.values())
    assert client.get_run(parents.pop()).data.metrics["stages/ran"] == 4


def test_one_failing_beside_another_is_named_and_the_other_is_published(workdir: Path) -> None:
    config = DiamondConfig(left=BranchConfig(fail=True))
    pipeline = diamond(config, threading.Barrier(2, timeout=20).wait)
    with pytest.raises(RuntimeError, match="left broke"):
        run_pipeline(pipeline, resolve_runtime(config.runtime))
    statuses = {s.name: s.status for s in stage_statuses(pipeline, resolve_runtime(config.runtime))}
    assert statuses == {"source": "done", "left": "missing", "right": "done", "both": "missing"}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("llama2")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED" and parent.data.tags["llama2.failed_stage"] == "left"
    by_stage = {r.data.tags.get("llama2.stage"): r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert by_stage == {"source": "FINISHED", "left": "FAILED", "right": "FINISHED"}


def test_stages_whose_cpus_do_not_fit_together_run_one_after_the_other(workdir: Path) -> None:
    """Each branch asks for all the machine's CPUs: neither may start while the other runs."""
    cpus = float(os.cpu_count() or 1)
    config = DiamondConfig(left=BranchConfig(cpus=cpus), right=BranchConfig(cpus=cpus))
    alone = threading.Lock()

    def exclusive() -> None:
        assert alone.acquire(blocking=False), "both branches ran at once"
        time.sleep(0.2)
        alone.release()

    outcomes = run_pipeline(diamond(config, exclusive), resolve_runtime(config.runtime))
    assert [o.name for o in outcomes if not o.cache_hit] == ["source", "left", "right", "both"]
