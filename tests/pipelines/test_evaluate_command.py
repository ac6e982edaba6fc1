"""`llama2 evaluate MODEL`: the evaluate stage's scoring on any model, its results in --output, and one
MLflow run holding the params, metrics, result files and the model's lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from model.convert import load_model
from model.tokenizer import load_tokenizer
from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR, read_questions
from operators.evaluate.loglik import question_results
from pipelines.cli import main
from pipelines.model_source import TAG_MODEL, TAG_MODEL_RUN, TAG_MODEL_SOURCE, TAG_MODEL_VERSION
from tests.model.tiny_model_dir import write_tiny_model
from tests.pipelines.toy_model_pipeline import REGISTERED, run_twice, stage_runs

LIMIT = 3
CHOSEN = ["arc_easy", "boolq"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", "evaluate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def only_run(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("llama2").experiment_id
    runs = client.search_runs([experiment], "tags.`llama2.model` != ''")
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture
def evaluated(capsys, workdir, model_dir) -> Path:
    code, _, err = evaluate(capsys, str(model_dir), "--benchmarks", ",".join(CHOSEN), "--limit", str(LIMIT),
                            "--output", "out")
    assert code == 0, err
    return workdir / "out"


def test_every_question_is_scored_as_the_evaluate_stage_scores_it(evaluated, model_dir):
    model, tokenizer = load_model(model_dir, "hf").eval(), load_tokenizer(model_dir)
    for name in CHOSEN:
        questions = list(read_questions(BENCHMARKS[name], SHIPPED_DIR, LIMIT))
        expected = question_results(model, questions, tokenizer.encode, tokenizer.bos_id, model.args.max_seq_len)
        rows = [json.loads(line) for line in (evaluated / "questions" / f"{name}.jsonl").read_text().splitlines()]
        assert rows == expected


def test_results_json_has_each_benchmarks_metrics_over_the_limited_questions(evaluated):
    results = json.loads((evaluated / "results.json").read_text())
    assert sorted(results) == sorted([*CHOSEN, "table3"])
    results = {name: results[name] for name in CHOSEN}
    assert sorted(results["arc_easy"]) == ["acc", "acc_norm", "chance", "examples"]
    assert sorted(results["boolq"]) == ["acc", "chance", "examples"]  # lm-eval reports no acc_norm for boolq
    assert all(r["examples"] == LIMIT and 0 <= r["acc"] <= 1 for r in results.values())


def test_the_mlflow_run_holds_params_metrics_lineage_and_result_files(evaluated, workdir, model_dir):
    client, run = only_run(workdir)
    results = json.loads((evaluated / "results.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name.startswith(f"evaluate · {model_dir} · ")
    assert run.data.params == {"model": str(model_dir), "benchmarks": "arc_easy,boolq", "limit": "3",
                               "benchmark_dir": str(SHIPPED_DIR)}
    assert run.data.metrics == {"eval/arc_easy/acc": results["arc_easy"]["acc"],
                                "eval/arc_easy/acc_norm": results["arc_easy"]["acc_norm"],
                                "eval/boolq/acc": results["boolq"]["acc"],
                                "table3/commonsense_reasoning": 100 * results["arc_easy"]["acc_norm"],
                                "table3/reading_comprehension": 100 * results["boolq"]["acc"]}
    assert (run.data.tags[TAG_MODEL], run.data.tags[TAG_MODEL_SOURCE]) == (str(model_dir), str(model_dir))
    assert "llama2.stage" not in run.data.tags  # not a stage run: lineage walks never take it for one
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"results.json", "table3.md", "questions"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "questions")} == {
        "questions/arc_easy.jsonl", "questions/boolq.jsonl"}


def test_an_output_that_holds_an_evaluation_is_refused_in_one_line_before_any_run(capsys, workdir, model_dir):
    (workdir / "out").mkdir()
    (workdir / "out" / "results.json").write_text("{}")
    code, _, err = evaluate(capsys, str(model_dir), "--output", "out")
    assert code == 2
    assert err.strip() == "error: out already holds an evaluation (results.json); give another --output"
    assert not (workdir / "mlflow.db").exists()


def test_a_registered_version_is_evaluated_with_its_version_run_and_logged_model_as_lineage(
        ray_local, capsys, workdir, monkeypatch):
    run_twice(workdir, monkeypatch)
    made, _ = stage_runs(workdir)
    code, out, err = evaluate(capsys, f"models:/{REGISTERED}/1", "--benchmarks", "piqa", "--limit", "2")
    assert code == 0, err
    client, run = only_run(workdir)
    assert run.data.tags[TAG_MODEL_VERSION] == f"models:/{REGISTERED}/1" and run.data.tags[TAG_MODEL_RUN] == made
    logged = [m.model_id for m in client.get_run(made).outputs.model_outputs]
    assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == logged
    assert out.splitlines()[1].startswith("piqa")
