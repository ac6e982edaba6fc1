"""The stage contract: fingerprints, caching, selection, atomic publish, MLflow lineage.

The stages here are small real functions over text files, so the runner is tested without the
data operators.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from infra.lineage import lineage
from infra.settings import RuntimeSettings
from operators.stage_io import StageIO, StageResult
from pipelines.dag import Pipeline, Selection
from pipelines.manifest import MANIFEST_NAME
from pipelines.runner import MissingUpstreamError, StageContractError, run_pipeline, stage_statuses
from pipelines.stage import Stage


class LinesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lines: list[str] = Field(default_factory=lambda: ["alpha", "beta", "gamma", "delta"])


class KeepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_length: int = 5
    fail: bool = False


class JoinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    separator: str = " "


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    source: LinesConfig = Field(default_factory=LinesConfig)
    keep: KeepConfig = Field(default_factory=KeepConfig)
    join: JoinConfig = Field(default_factory=JoinConfig)


def write_lines(config: LinesConfig, io: StageIO) -> StageResult:
    (io.output_dir / "lines.txt").write_text("\n".join(config.lines))
    n = len(config.lines)
    return StageResult(counts={"in": n, "out": n, "rejected": 0})


def keep_long(config: KeepConfig, io: StageIO) -> StageResult:
    lines = (io.inputs["source"] / "lines.txt").read_text().split("\n")
    (io.output_dir / "partial.txt").write_text("written before the failure")
    if config.fail:
        raise RuntimeError("injected failure")
    kept = [line for line in lines if len(line) >= config.min_length]
    (io.output_dir / "kept.txt").write_text("\n".join(kept))
    (io.plots_dir / "lengths.png").write_bytes(b"\x89PNG fake but present")
    return StageResult(counts={"in": len(lines), "out": len(kept), "rejected": len(lines) - len(kept)})


def join_all(config: JoinConfig, io: StageIO) -> StageResult:
    kept = (io.inputs["keep"] / "kept.txt").read_text().split("\n")
    (io.output_dir / "joined.txt").write_text(config.separator.join(kept))
    return StageResult(counts={"in": len(kept), "out": 1, "rejected": len(kept) - 1})


def miscounting(config: JoinConfig, io: StageIO) -> StageResult:
    return StageResult(counts={"in": 3, "out": 1, "rejected": 0})


TOY = Pipeline(
    name="toy",
    default_config="",
    config_model=ToyConfig,
    stages=(
        Stage("source", write_lines),
        Stage("keep", keep_long, upstream=("source",)),
        Stage("join", join_all, upstream=("keep",)),
    ),
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def ran(outcomes) -> list[str]:
    return [o.name for o in outcomes if not o.cache_hit]


def test_first_run_runs_every_stage_and_publishes_manifests(workdir: Path) -> None:
    outcomes = run_pipeline(TOY, ToyConfig())
    assert ran(outcomes) == ["source", "keep", "join"]
    for o in outcomes:
        manifest = json.loads((o.output_dir / MANIFEST_NAME).read_text())
        assert o.output_dir == workdir / "artifacts" / o.name / o.fingerprint
        assert manifest["fingerprint"] == o.fingerprint
        assert manifest["counts"]["in"] == manifest["counts"]["out"] + manifest["counts"]["rejected"]
        assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest["files"])
    assert (workdir / "artifacts" / "join" / outcomes[2].fingerprint / "joined.txt").read_text() == "alpha gamma delta"


def test_unchanged_rerun_is_all_cache_hits_each_fast(workdir: Path) -> None:
    run_pipeline(TOY, ToyConfig())
    outcomes = run_pipeline(TOY, ToyConfig())
    assert ran(outcomes) == []
    assert all(o.seconds < 1.0 for o in outcomes), [(o.name, o.seconds) for o in outcomes]


def test_changing_one_section_reruns_that_stage_and_descendants_only(workdir: Path) -> None:
    first = run_pipeline(TOY, ToyConfig())
    second = run_pipeline(TOY, ToyConfig(keep=KeepConfig(min_length=4)))
    assert ran(second) == ["keep", "join"]
    assert first[0].fingerprint == second[0].fingerprint
    assert first[1].fingerprint != second[1].fingerprint and first[2].fingerprint != second[2].fingerprint


def test_only_with_missing_upstream_names_the_missing_stage(workdir: Path) -> None:
    with pytest.raises(MissingUpstreamError, match="'keep'"):
        run_pipeline(TOY, ToyConfig(), Selection.ONLY, "join")


def test_only_runs_one_stage_when_upstream_exists(workdir: Path) -> None:
    run_pipeline(TOY, ToyConfig(), Selection.UNTIL, "keep")
    outcomes = run_pipeline(TOY, ToyConfig(), Selection.ONLY, "join")
    assert ran(outcomes) == ["join"]


def test_force_reruns_the_selected_stages_with_identical_output(workdir: Path) -> None:
    first = run_pipeline(TOY, ToyConfig())
    before = (first[2].output_dir / "joined.txt").read_bytes()
    outcomes = run_pipeline(TOY, ToyConfig(), Selection.FROM, "keep", force=True)
    assert ran(outcomes) == ["keep", "join"]
    assert (first[2].output_dir / "joined.txt").read_bytes() == before


def test_failing_stage_leaves_no_output_and_rerun_completes(workdir: Path) -> None:
    broken = ToyConfig(keep=KeepConfig(fail=True))
    with pytest.raises(RuntimeError, match="injected failure"):
        run_pipeline(TOY, broken)
    statuses = {s.name: s for s in stage_statuses(TOY, broken)}
    assert statuses["source"].status == "done"
    assert statuses["keep"].status == "missing"
    assert not Path(statuses["keep"].location).exists()
    assert not list((workdir / "artifacts" / "keep").glob(".tmp-*"))
    outcomes = run_pipeline(TOY, ToyConfig())
    assert ran(outcomes) == ["keep", "join"]


def test_counts_that_do_not_add_up_are_refused(workdir: Path) -> None:
    bad = Pipeline("bad", (Stage("source", write_lines), Stage("join", miscounting, upstream=("source",))), ToyConfig, "")
    with pytest.raises(StageContractError, match="do not add up"):
        run_pipeline(bad, ToyConfig())
    assert [s.status for s in stage_statuses(bad, ToyConfig())] == ["done", "missing"]


def test_stage_statuses_tell_done_stale_and_missing(workdir: Path) -> None:
    run_pipeline(TOY, ToyConfig(), Selection.UNTIL, "keep")
    statuses = stage_statuses(TOY, ToyConfig(keep=KeepConfig(min_length=2)))
    assert [s.status for s in statuses] == ["done", "stale", "missing"]


def test_mlflow_gets_a_parent_and_one_child_per_stage_with_lineage_tags(workdir: Path) -> None:
    first = run_pipeline(TOY, ToyConfig())
    run_pipeline(TOY, ToyConfig())
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("llama2")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 6
    keep_runs = [r for r in children if r.data.tags["llama2.stage"] == "keep"]
    produced = next(r for r in keep_runs if r.data.tags["llama2.cache_hit"] == "false")
    cached = next(r for r in keep_runs if r.data.tags["llama2.cache_hit"] == "true")
    assert cached.data.tags["llama2.produced_by_run"] == produced.info.run_id
    assert produced.data.params["min_length"] == "5"
    assert produced.data.tags["llama2.upstream.source.fingerprint"] == first[0].fingerprint
    assert produced.data.metrics["count_rejected"] == 1
    datasets = {(d.dataset.digest, [t.value for t in d.tags][0]) for d in produced.inputs.dataset_inputs}
    assert datasets == {(first[0].fingerprint, "input"), (first[1].fingerprint, "output")}
    artifacts = {a.path for a in client.list_artifacts(produced.info.run_id)}
    assert {"manifest.json", "plots"} <= artifacts


def test_lineage_walks_from_a_cache_hit_back_to_the_source(workdir: Path) -> None:
    run_pipeline(TOY, ToyConfig())
    outcomes = run_pipeline(TOY, ToyConfig())
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    chain = lineage(client, outcomes[2].run_id)
    assert [n.stage for n in chain] == ["source", "keep", "join"]
    assert chain[1].params["min_length"] == "5"
