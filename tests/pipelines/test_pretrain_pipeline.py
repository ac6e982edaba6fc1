"""The README's main command, `llama2 run pretrain`, end to end on the shipped demo; then the CLI around it,
and what the README's `mlflow ui` shows of it (read over the REST API of `mlflow server` on the demo's store).

One full run (all 7 stages, about three minutes on 2 cores) is shared by the tests below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from tests.infra.local_mlflow_server import mlflow_server
from tests.infra.mlflow_rest import MlflowRest, children, datasets, is_child, metrics, tags

STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize", "pretrain", "evaluate"]
RAW_INPUTS = {"django-4.2/django-docs-4.2.jsonl.gz", "django-5.2/django-docs-5.2.jsonl.zst",
              "python-3.11/python-docs-3.11.parquet"}


def llama2(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: str) -> dict[str, list[str]]:
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if row and row[0] in STAGES}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, ray_local) -> Path:
    """`llama2 run pretrain` in a fresh working directory, as the README says."""
    workdir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["--quiet", "run", "pretrain"]) == 0
    mlflow.set_tracking_uri(None)
    return workdir


@pytest.fixture
def in_demo(demo_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(demo_run)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield demo_run
    mlflow.set_tracking_uri(None)


def manifest(workdir: Path, stage: str) -> dict:
    [path] = (workdir / "artifacts" / "pretrain" / stage).glob("*/manifest.json")
    return json.loads(path.read_text())


def test_the_demo_publishes_all_seven_stages_with_counts_that_add_up(in_demo: Path) -> None:
    for stage in STAGES:
        counts = manifest(in_demo, stage)["counts"]
        assert counts["in"] == counts["out"] + counts["rejected"], stage
    assert manifest(in_demo, "ingest")["counts"]["out"] == manifest(in_demo, "dedup")["counts"]["in"]
    assert manifest(in_demo, "dedup")["counts"]["rejected"] > 100  # the two Django releases share most pages


def test_the_demo_model_learns_loss_falls_by_a_third(in_demo: Path) -> None:
    metrics = manifest(in_demo, "pretrain")["metrics"]
    assert metrics["train/steps"] == 120
    assert metrics["train/final_loss"] <= 0.7 * metrics["train/first_loss"], metrics


def test_evaluate_metrics_and_the_loss_curve_are_in_mlflow(in_demo: Path) -> None:
    client = MlflowClient(f"sqlite:///{in_demo / 'mlflow.db'}")
    [experiment] = [client.get_experiment_by_name("llama2")]
    runs = {r.data.tags.get("llama2.stage"): r for r in client.search_runs([experiment.experiment_id])}
    evaluate = runs["evaluate"].data.metrics
    assert {"eval/arc_easy/acc", "eval/hellaswag/acc_norm", "eval/boolq/acc", "val/perplexity"} <= set(evaluate)
    # Table 3's suite on the shipped subsets: SIQA and OpenBookQA are not shipped (operators/evaluate/data/PROVENANCE.md)
    assert evaluate["eval/skipped_benchmarks"] == 2
    assert runs["evaluate"].data.tags["llama2.skipped_benchmarks"] == "siqa,openbookqa"
    curve = client.get_metric_history(runs["pretrain"].info.run_id, "train/loss")
    assert [m.step for m in curve][:2] == [1, 10] and curve[-1].step == 120
    assert curve[-1].value < curve[0].value


def test_unchanged_rerun_is_all_cache_hits_each_well_under_a_second(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "run", "pretrain")
    assert code == 0
    rows = table(out)
    assert list(rows) == STAGES
    assert all(row[1] == "cached" and float(row[2]) < 1.0 for row in rows.values()), out


def test_changing_one_stage_reruns_it_and_its_descendants_only(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "run", "pretrain", "--until", "tokenize",
                          "--set", "tokenize.max_tokens_per_shard=200000")
    assert code == 0
    assert [name for name, row in table(out).items() if row[1] == "ran"] == ["tokenize"]
    code, out, _ = llama2(capsys, "stages", "pretrain", "--set", "tokenize.max_tokens_per_shard=200000")
    assert {name: row[1] for name, row in table(out).items()}["pretrain"] == "stale"


def test_stages_reports_done_and_stale(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "stages", "pretrain", "--set", "filter.quality.min_words=10")
    assert code == 0
    status = {name: row[1] for name, row in table(out).items()}
    assert status == {"ingest": "done", "dedup": "done", "filter": "stale", "train_tokenizer": "stale",
                      "tokenize": "stale", "pretrain": "stale", "evaluate": "stale"}


def test_a_config_file_changes_only_its_keys_over_the_demo(in_demo: Path, capsys) -> None:
    (in_demo / "my.yaml").write_text("dedup:\n  threshold: 0.7\n")
    code, out, _ = llama2(capsys, "stages", "pretrain", "--config", "my.yaml")
    assert code == 0
    status = {name: row[1] for name, row in table(out).items()}
    assert status["ingest"] == "done" and status["dedup"] == "stale"


def test_only_with_missing_upstream_names_it_and_a_command_that_works(in_demo: Path, capsys) -> None:
    code, _, err = llama2(capsys, "run", "pretrain", "--only", "tokenize", "--set", "filter.quality.min_words=11")
    assert code == 2
    assert "upstream stage 'filter'" in err and "`llama2 run pretrain --until tokenize`" in err
    assert len(err.strip().splitlines()) == 1


def test_lineage_prints_the_chain_from_the_evaluation_back_to_the_corpus(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "lineage", "evaluate")
    assert code == 0
    stages = re.findall(r"^(\w+)  fingerprint=", out, flags=re.MULTILINE)
    assert stages[-1] == "evaluate" and set(stages) == set(STAGES)
    assert stages.index("ingest") < stages.index("dedup") < stages.index("filter") < stages.index("pretrain")
    assert re.search(r"^  threshold = ", out, flags=re.MULTILINE)
    assert len(set(re.findall(r"run=([0-9a-f]{32})", out))) == len(STAGES)


def test_lineage_of_an_unknown_run_is_one_line(in_demo: Path, capsys) -> None:
    code, _, err = llama2(capsys, "lineage", "0123456789abcdef0123456789abcdef")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no run" in err


@pytest.fixture(scope="module")
def demo_ui(demo_run: Path) -> Iterator[MlflowRest]:
    """A tracking server on the demo's `mlflow.db`, as the README's `mlflow ui` serves it."""
    with mlflow_server(demo_run / "mlflow-server", backend_uri=f"sqlite:///{demo_run / 'mlflow.db'}") as server:
        yield MlflowRest(server.uri)


def first_invocation(rest: MlflowRest) -> tuple[dict, dict[str, dict]]:
    """The demo's own parent run (the oldest) and its stage runs."""
    runs = rest.runs(rest.experiment("llama2")["experiment_id"])
    parent = [r for r in runs if not is_child(r)][-1]
    return parent, children(runs, parent)


def test_mlflow_shows_the_demo_as_one_named_invocation_of_described_stages(demo_ui: MlflowRest) -> None:
    assert tags(demo_ui.experiment("llama2"))["mlflow.experimentKind"] == "custom_model_development"
    parent, stages = first_invocation(demo_ui)
    assert re.fullmatch(r"pretrain · \d{4}-\d\d-\d\d \d\d:\d\d", parent["info"]["run_name"])
    assert set(stages) == set(STAGES) and metrics(parent)["stages/ran"] == 7
    assert "registered llama2-base v1" in tags(parent)["mlflow.note.content"]
    for stage, run in stages.items():
        assert tags(run)["mlflow.note.content"].startswith(f"**{stage}**: "), stage
    assert "held-out validation documents" in tags(stages["pretrain"])["mlflow.note.content"]


def test_the_pretrain_run_charts_training_loss_from_step_1_and_validation_loss(demo_ui: MlflowRest) -> None:
    _, stages = first_invocation(demo_ui)
    run_id = stages["pretrain"]["info"]["run_id"]
    train, val = demo_ui.metric_history(run_id, "train/loss"), demo_ui.metric_history(run_id, "val/loss")
    assert train[0][0] == 1 and train[-1][0] == 120
    assert [step for step, _ in val] == [20, 40, 60, 80, 100, 120] and val[-1][1] < val[0][1]


def test_the_raw_corpora_and_every_output_are_datasets_with_their_schema(demo_ui: MlflowRest) -> None:
    _, stages = first_invocation(demo_ui)
    assert set(datasets(stages["ingest"])["input"]) == RAW_INPUTS
    tokens = datasets(stages["tokenize"])["output"]["tokenize"]
    assert tokens.schema["tokens/tokens"].startswith("list<") and tokens.profile["rows_in_tokens/"] > 400


def test_the_base_model_is_registered_and_its_lineage_reaches_the_corpus(
    demo_ui: MlflowRest, in_demo: Path, capsys
) -> None:
    _, stages = first_invocation(demo_ui)
    version = demo_ui.get("model-versions/get", name="llama2-base", version="1")["model_version"]
    assert version["run_id"] == stages["pretrain"]["info"]["run_id"]
    code, out, _ = llama2(capsys, "lineage", "models:/llama2-base/1")
    assert code == 0 and out.startswith("models:/llama2-base/1  = llama2-base version 1")
    chain = re.findall(r"^(\w+)  fingerprint=", out, flags=re.MULTILINE)
    assert chain[0] == "ingest" and chain[-1] == "pretrain" and "evaluate" not in chain

