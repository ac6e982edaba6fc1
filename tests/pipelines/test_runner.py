"""The stage contract: roles, fingerprints, caching, selection, atomic publish, stats checks, MLflow lineage.

The stages here are small real functions over text files, so the runner is tested without the
data operators.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from infra.lineage import lineage
from infra.settings import RuntimeContext, RuntimeSettings, resolve_runtime
from operators.stage_io import InputRows, MissingInputError, StageIO, StageStats
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


def write_lines(config: LinesConfig, io: StageIO) -> StageStats:
    (io.output_dir / "lines.txt").write_text("\n".join(config.lines))
    n = len(config.lines)
    return StageStats(unit="lines", count_in=n, count_out=n)


def keep_long(config: KeepConfig, io: StageIO) -> StageStats:
    lines = (io.input("lines") / "lines.txt").read_text().split("\n")
    (io.output_dir / "partial.txt").write_text("written before the failure")
    if config.fail:
        raise RuntimeError("injected failure")
    kept = [line for line in lines if len(line) >= config.min_length]
    (io.output_dir / "kept.txt").write_text("\n".join(kept))
    return StageStats(unit="lines", count_in=len(lines), count_out=len(kept), rejected={"short": len(lines) - len(kept)})


def join_all(config: JoinConfig, io: StageIO) -> StageStats:
    kept = (io.input("lines") / "kept.txt").read_text().split("\n")
    (io.output_dir / "joined.txt").write_text(config.separator.join(kept))
    return StageStats(unit="lines", count_in=len(kept), count_out=1, rejected={"joined": len(kept) - 1})


def toy(config: ToyConfig = ToyConfig()) -> Pipeline:
    return Pipeline("toy", (
        Stage("source", write_lines, config.source),
        Stage("keep", keep_long, config.keep, inputs={"lines": "source"}),
        Stage("join", join_all, config.join, inputs={"lines": "keep"}),
    ), config)


def run(config: ToyConfig = ToyConfig(), *args, **kwargs):
    return run_pipeline(toy(config), context(config), *args, **kwargs)


def context(config: BaseModel) -> RuntimeContext:
    return resolve_runtime(config.runtime)


def ran(outcomes) -> list[str]:
    return [o.name for o in outcomes if not o.cache_hit]


def test_first_run_runs_every_stage_and_publishes_manifests(workdir: Path) -> None:
    outcomes = run()
    assert ran(outcomes) == ["source", "keep", "join"]
    for o in outcomes:
        manifest = json.loads((o.output_dir / MANIFEST_NAME).read_text())
        assert o.output_dir == workdir / "artifacts" / "toy" / o.name / o.fingerprint
        assert manifest["fingerprint"] == o.fingerprint
        assert manifest["counts"]["in"] == manifest["counts"]["out"] + manifest["counts"]["rejected"]
        assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest["files"])
    assert (outcomes[2].output_dir / "joined.txt").read_text() == "alpha gamma delta"
    assert json.loads((outcomes[1].output_dir / MANIFEST_NAME).read_text())["inputs"] == {"lines": "source"}


def test_unchanged_rerun_is_all_cache_hits_each_fast(workdir: Path) -> None:
    run()
    outcomes = run()
    assert ran(outcomes) == []
    assert all(o.seconds < 1.0 for o in outcomes), [(o.name, o.seconds) for o in outcomes]


def test_changing_one_section_reruns_that_stage_and_descendants_only(workdir: Path) -> None:
    first = run()
    second = run(ToyConfig(keep=KeepConfig(min_length=4)))
    assert ran(second) == ["keep", "join"]
    assert first[0].fingerprint == second[0].fingerprint
    assert first[1].fingerprint != second[1].fingerprint and first[2].fingerprint != second[2].fingerprint


def test_one_operator_serves_two_stages_with_their_own_sections(workdir: Path) -> None:
    class TwoKeeps(ToyConfig):
        strict: KeepConfig = Field(default_factory=lambda: KeepConfig(min_length=6))

    config = TwoKeeps()
    pipeline = Pipeline("two", (
        Stage("source", write_lines, config.source),
        Stage("keep_loose", keep_long, config.keep, inputs={"lines": "source"}, section="keep"),
        Stage("keep_strict", keep_long, config.strict, inputs={"lines": "source"}, section="strict"),
    ), config)
    outcomes = {o.name: o for o in run_pipeline(pipeline, context(config))}
    assert (outcomes["keep_loose"].output_dir / "kept.txt").read_text() == "alpha\ngamma\ndelta"
    assert (outcomes["keep_strict"].output_dir / "kept.txt").read_text() == ""
    assert outcomes["keep_loose"].fingerprint != outcomes["keep_strict"].fingerprint


def test_an_operator_reads_roles_whatever_the_upstream_stage_is_called(workdir: Path) -> None:
    config = ToyConfig()
    pipeline = Pipeline("renamed", (
        Stage("corpus_v2", write_lines, config.source),
        Stage("keep", keep_long, config.keep, inputs={"lines": "corpus_v2"}),
    ), config)
    outcomes = run_pipeline(pipeline, context(config))
    assert (outcomes[1].output_dir / "kept.txt").read_text() == "alpha\ngamma\ndelta"


def test_a_role_the_pipeline_does_not_wire_is_a_clear_error(tmp_path: Path) -> None:
    io = StageIO(tmp_path, {"text": tmp_path}, stage="keep")
    with pytest.raises(MissingInputError, match="reads a 'lines' input, but its pipeline wires only: text"):
        keep_long(KeepConfig(), io)


def test_upstream_fingerprints_enter_by_role(workdir: Path) -> None:
    config = ToyConfig()
    as_lines = Stage("keep", keep_long, config.keep, inputs={"lines": "source"})
    as_text = Stage("keep", keep_long, config.keep, inputs={"text": "source"})
    assert as_lines.fingerprint({"source": "abc"}) != as_text.fingerprint({"source": "abc"})


def test_a_partial_stage_function_hashes_the_wrapped_function_and_its_arguments() -> None:
    config = KeepConfig()
    plain = Stage("keep", keep_long, config)
    wrapped = Stage("keep", functools.partial(keep_long), config)
    other_args = Stage("keep", functools.partial(join_all), config)
    assert plain.code_hash() != other_args.code_hash()
    assert wrapped.code_hash() != Stage("keep", functools.partial(keep_long, io=None), config).code_hash()
    assert wrapped.fingerprint({}) == wrapped.fingerprint({})


def test_only_with_missing_upstream_names_the_missing_stage_and_a_command_that_works(workdir: Path) -> None:
    with pytest.raises(MissingUpstreamError, match=r"'keep'.*`llama2 run toy --until join`"):
        run(ToyConfig(), Selection.ONLY, "join")


def test_only_runs_one_stage_when_upstream_exists(workdir: Path) -> None:
    run(ToyConfig(), Selection.UNTIL, "keep")
    outcomes = run(ToyConfig(), Selection.ONLY, "join")
    assert ran(outcomes) == ["join"]


def test_force_reruns_the_selected_stages_with_identical_output(workdir: Path) -> None:
    first = run()
    before = (first[2].output_dir / "joined.txt").read_bytes()
    outcomes = run(ToyConfig(), Selection.FROM, "keep", force=True)
    assert ran(outcomes) == ["keep", "join"]
    assert (first[2].output_dir / "joined.txt").read_bytes() == before


def test_failing_stage_leaves_no_output_and_rerun_completes(workdir: Path) -> None:
    broken = ToyConfig(keep=KeepConfig(fail=True))
    with pytest.raises(RuntimeError, match="injected failure"):
        run(broken)
    statuses = {s.name: s for s in stage_statuses(toy(broken), context(broken))}
    assert statuses["source"].status == "done"
    assert statuses["keep"].status == "missing"
    assert not Path(statuses["keep"].location).exists()
    assert not list((workdir / "artifacts" / "toy" / "keep").glob(".work-*/output-*"))
    outcomes = run()
    assert ran(outcomes) == ["keep", "join"]


def test_scratch_survives_a_failed_attempt_and_is_gone_after_publishing(workdir: Path) -> None:
    def remembering(config: KeepConfig, io: StageIO) -> StageStats:
        attempts = io.scratch() / "attempts"
        count = int(attempts.read_text()) + 1 if attempts.exists() else 1
        attempts.write_text(str(count))
        if count == 1:
            raise RuntimeError("first attempt dies")
        (io.output_dir / "attempts.txt").write_text(str(count))
        return StageStats(unit="attempts", count_in=1, count_out=1)

    config = ToyConfig()
    pipeline = Pipeline("scratch", (Stage("retry", remembering, config.keep),), config)
    with pytest.raises(RuntimeError, match="first attempt dies"):
        run_pipeline(pipeline, context(config))
    [outcome] = run_pipeline(pipeline, context(config))
    assert (outcome.output_dir / "attempts.txt").read_text() == "2"
    assert not list((workdir / "artifacts" / "scratch" / "retry").glob(".work-*"))


def test_counts_that_do_not_add_up_are_refused(workdir: Path) -> None:
    def miscounting(config: JoinConfig, io: StageIO) -> StageStats:
        return StageStats(unit="lines", count_in=3, count_out=1)

    config = ToyConfig()
    bad = Pipeline("bad", (Stage("source", write_lines, config.source),
                           Stage("join", miscounting, config.join, inputs={"lines": "source"})), config)
    with pytest.raises(StageContractError, match="do not add up"):
        run_pipeline(bad, context(config))
    assert [s.status for s in stage_statuses(bad, context(config))] == ["done", "missing"]


def test_rows_reported_but_not_in_the_files_are_refused(workdir: Path) -> None:
    def boasting(config: JoinConfig, io: StageIO) -> StageStats:
        (io.output_dir / "rows").mkdir()
        return StageStats(unit="rows", count_in=5, count_out=5, output_rows={"rows/": 5})

    config = ToyConfig()
    bad = Pipeline("boast", (Stage("boast", boasting, config.join),), config)
    with pytest.raises(StageContractError, match="under rows/ hold 0 rows but it reports 5"):
        run_pipeline(bad, context(config))


def test_rows_read_that_differ_from_the_input_manifest_are_refused(workdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def shards(config: LinesConfig, io: StageIO) -> StageStats:
        (io.output_dir / "rows").mkdir()
        for i in range(2):
            pq.write_table(pa.table({"x": [i] * 3}), io.output_dir / "rows" / f"part-{i}.parquet")
        return StageStats(unit="rows", count_in=6, count_out=6, output_rows={"rows/": 6})

    def reader(config: KeepConfig, io: StageIO) -> StageStats:
        (io.input("rows") / "rows" / "part-1.parquet").unlink()  # lost after the runner found the input finished
        n = sum(pq.read_metadata(f).num_rows for f in sorted((io.input("rows") / "rows").glob("*.parquet")))
        return StageStats(unit="rows", count_in=n, count_out=n, inputs_read=(InputRows("rows", "rows/", n),))

    config = ToyConfig()
    pipeline = Pipeline("shards", (Stage("make", shards, config.source),
                                   Stage("read", reader, config.keep, inputs={"rows": "make"})), config)
    run_pipeline(pipeline, context(config), Selection.ONLY, "make")
    with pytest.raises(StageContractError, match="read 3 rows from rows/ of its 'rows' input, whose manifest lists 6"):
        run_pipeline(pipeline, context(config), Selection.ONLY, "read")
    assert [s.status for s in stage_statuses(pipeline, context(config))] == ["changed", "missing"]


def test_a_stage_rejecting_most_of_its_input_says_so_in_mlflow(workdir: Path) -> None:
    outcomes = run(ToyConfig(keep=KeepConfig(min_length=6)))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    tags = client.get_run(outcomes[1].run_id).data.tags
    assert "rejected 100% of its input" in tags["llama2.warning"]
    assert "llama2.warning" not in client.get_run(outcomes[0].run_id).data.tags


def test_stage_statuses_tell_done_stale_and_missing(workdir: Path) -> None:
    run(ToyConfig(), Selection.UNTIL, "keep")
    statuses = stage_statuses(toy(ToyConfig(keep=KeepConfig(min_length=2))), context(ToyConfig()))
    assert [s.status for s in statuses] == ["done", "stale", "missing"]


def test_stage_statuses_say_why_each_stage_that_is_not_done_would_run(workdir: Path) -> None:
    run(ToyConfig(), Selection.UNTIL, "keep")
    statuses = stage_statuses(toy(ToyConfig(keep=KeepConfig(min_length=2))), context(ToyConfig()))
    assert [s.reason for s in statuses] == [None, "config keep changed: min_length", "never made with any config"]
    run(ToyConfig())
    rewired = dataclasses.replace(toy(), stages=(*toy().stages[:2], Stage("join", join_all, JoinConfig(),
                                                                              inputs={"lines": "source"})))
    assert stage_statuses(rewired, context(ToyConfig()))[2].reason == "reads source as lines (was keep)"
    statuses = stage_statuses(toy(ToyConfig(source=LinesConfig(lines=["epsilon"]))), context(ToyConfig()))
    assert [s.reason for s in statuses] == ["config source changed: lines", "upstream source changed",
                                            "upstream keep changed"]


def test_two_pipelines_with_a_stage_of_the_same_name_do_not_mix(workdir: Path) -> None:
    config = ToyConfig()
    first = Pipeline("first", (Stage("source", write_lines, config.source),), config)
    second = Pipeline("second", (Stage("source", write_lines, config.source),), config)
    run_pipeline(first, context(config))
    assert [s.status for s in stage_statuses(second, context(config))] == ["missing"]


def test_mlflow_gets_a_parent_and_one_child_per_stage_with_lineage_tags(workdir: Path) -> None:
    first = run()
    run()
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
    assert produced.data.params == {}  # the defaults: only keys that differ from them are params
    assert json.loads(produced.data.tags["llama2.config"]) == {"min_length": 5, "fail": False}
    assert produced.data.tags["llama2.upstream.source.fingerprint"] == first[0].fingerprint
    assert produced.data.tags["llama2.inputs"] == "lines=source"
    assert produced.data.metrics["counts/lines_rejected"] == 1
    assert produced.data.metrics["rejected/short"] == 1
    datasets = {(d.dataset.digest, [t.value for t in d.tags][0]) for d in produced.inputs.dataset_inputs}
    assert datasets == {(first[0].fingerprint, "input"), (first[1].fingerprint, "output")}
    assert "manifest.json" in {a.path for a in client.list_artifacts(produced.info.run_id)}


def test_lineage_walks_from_a_cache_hit_back_to_the_source(workdir: Path) -> None:
    run()
    outcomes = run()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    chain = lineage(client, outcomes[2].run_id)
    assert [n.stage for n in chain] == ["source", "keep", "join"]
    assert chain[1].params["min_length"] == "5"


def test_lineage_names_the_files_a_stage_read_from_outside_the_store(workdir: Path) -> None:
    lines = workdir / "lines.txt"
    lines.write_text("alpha\nomega")

    def listed(config: LinesConfig) -> list[list]:
        return [["lines", str(lines), lines.stat().st_size, lines.stat().st_mtime_ns]]

    pipeline = dataclasses.replace(toy(), stages=(Stage("source", write_lines, LinesConfig(), outside_inputs=listed),
                                                  *toy().stages[1:]))
    outcomes = run_pipeline(pipeline, context(ToyConfig()))
    chain = lineage(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), outcomes[2].run_id)
    assert [n.files for n in chain][1:] == [(), ()]
    [file] = chain[0].files
    assert file.startswith("lines/lines.txt  digest=") and "bytes=11" in file


def test_credentials_in_uris_never_reach_the_logged_config(workdir: Path) -> None:
    config = ToyConfig(runtime=RuntimeSettings(ray_address="ray://admin:hunter2@head:10001"))
    outcomes = run_pipeline(toy(config), resolve_runtime(RuntimeSettings()))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = client.get_run(outcomes[0].run_id).data.tags["mlflow.parentRunId"]
    logged = client.download_artifacts(parent, "config.json", str(workdir))
    text = Path(logged).read_text()
    assert "hunter2" not in text and "ray://***@head:10001" in text


def test_changed_keys_are_params_and_the_parent_is_named_after_the_pipeline(workdir: Path) -> None:
    outcomes = run(ToyConfig(keep=KeepConfig(min_length=4)), Selection.UNTIL, "keep")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    keep = client.get_run(outcomes[1].run_id)
    assert keep.data.params == {"min_length": "4"}
    parent = client.get_run(keep.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name.startswith("toy · ") and parent.data.params["selection"] == "until keep"
    assert parent.data.metrics["stages/ran"] == 2


def test_a_registered_model_in_a_local_store_loads_by_its_model_uri(workdir: Path) -> None:
    from model.convert import load_model
    from tests.infra.window_pipeline import MODEL_NAME, RowsConfig, WindowConfig, window

    (workdir / "notes.txt").write_text("1\n5\n")
    config = WindowConfig(rows=RowsConfig(notes=str(workdir / "notes.txt")))
    outcomes = run_pipeline(window(config), context(config))
    path = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/1", dst_path=str(workdir / "download"))
    loaded = load_model(Path(path), "hf").state_dict()
    published = load_model(outcomes[-1].output_dir / "model", "hf").state_dict()
    assert all(loaded[k].equal(published[k]) for k in published)
    assert list((workdir / "mlartifacts").rglob("model.safetensors"))  # a local store is copied once, into MLflow



def test_a_pipeline_note_is_logged_and_ends_up_in_the_parent_runs_note(workdir: Path, caplog) -> None:
    config = ToyConfig()
    noted = dataclasses.replace(toy(config), notes=("the toy leaves out its middle",))
    with caplog.at_level("WARNING", logger="pipelines.runner"):
        outcomes = run_pipeline(noted, context(config))
    assert "the toy leaves out its middle" in caplog.text
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = client.get_run(client.get_run(outcomes[0].run_id).data.tags["mlflow.parentRunId"])
    assert parent.data.tags["mlflow.note.content"].endswith("Note: the toy leaves out its middle")


def test_a_chat_config_without_rlhf_rounds_says_so() -> None:
    from pipelines.chat import CHAT
    from pipelines.config_loader import load_config

    config = load_config(CHAT.config_model, "chat", None, ["rlhf.rounds=[]"], default_file=CHAT.default_config)
    pipeline = CHAT.build(config)
    assert not any(name.startswith(("rejection_sampling", "ppo")) for name in pipeline.names)
    assert pipeline.notes == ("rlhf.rounds is empty: no rejection sampling or PPO runs, and Ghost Attention starts "
                              "from the SFT model",)
