"""The suite on Ray actors: every question of every kind gets its record, the answers do not depend on how
many actors shared the work, a benchmark without data is skipped by name, and table3.md is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.convert import load_model
from model.generate import Generator
from model.tokenizer import load_tokenizer
from operators.evaluate.benchmark_suite import SuiteSettings, missing, run_benchmarks
from operators.evaluate.benchmarks import SHIPPED_DIR
from operators.evaluate.generation import generate_until
from operators.evaluate.table3 import ALL
from operators.evaluate.workers import WorkerConfig
from tests.model.tiny_model_dir import write_tiny_model

CHOSEN = ["arc_easy", "nq_open", "humaneval"]
LIMIT = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def evaluate(model_dir: Path, out: Path, workers: int, directory: Path = SHIPPED_DIR):
    settings = SuiteSettings(WorkerConfig(workers=workers, chunk_size=2), max_gen_toks=6)
    return run_benchmarks(model_dir, CHOSEN, directory, LIMIT, out, settings, "tiny")


@pytest.fixture(scope="module")
def two_actors(model_dir, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("two")
    return out, evaluate(model_dir, out, workers=2)


def records(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / "questions" / f"{name}.jsonl").read_text().splitlines()]


def test_every_question_has_its_prompt_answer_gold_and_verdict(two_actors):
    out, suite = two_actors
    for name in CHOSEN:
        found = records(out, name)
        assert [r["index"] for r in found] == list(range(LIMIT)) and suite.results[name]["examples"] == LIMIT
        assert all(r["prompt"] and isinstance(r["correct"], bool) and "gold" in r for r in found)
    assert all(len(r["logliks"]) == 4 for r in records(out, "arc_easy"))
    assert all("generation" in r and "extracted" in r for r in records(out, "nq_open"))
    assert all(r["outcome"] and r["program"] for r in records(out, "humaneval"))


def test_answers_do_not_depend_on_how_many_actors_shared_the_work(two_actors, model_dir, tmp_path):
    out, _ = two_actors
    evaluate(model_dir, tmp_path, workers=1)
    for name in CHOSEN:
        ours, alone = records(out, name), records(tmp_path, name)
        if name == "arc_easy":  # batch composition may move a log-likelihood in its last bits
            assert [r["pick_acc"] for r in ours] == [r["pick_acc"] for r in alone]
            assert all(abs(a - b) < 1e-4 for r, s in zip(ours, alone) for a, b in zip(r["logliks"], s["logliks"]))
        else:
            assert [r["generation"] for r in ours] == [r["generation"] for r in alone]


def test_table3_md_holds_the_columns_of_what_ran(two_actors):
    out, suite = two_actors
    table = (out / "table3.md").read_text()
    assert "| Model | Code | Commonsense Reasoning | World Knowledge |" in table
    assert set(suite.table3) == {"Code", "Commonsense Reasoning", "World Knowledge"}
    assert suite.table3["Commonsense Reasoning"] == {"score": 100 * suite.results["arc_easy"]["acc_norm"], "ran": 1,
                                                     "of": 8}
    assert "(1/8)" in table and suite.metrics()["table3/code"] == 100 * suite.results["humaneval"]["pass_at_1"]


def test_a_benchmark_without_its_file_is_skipped_and_named(model_dir, tmp_path, ray_local):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(SHIPPED_DIR / ALL["arc_easy"].file, mine)
    assert missing(CHOSEN, mine) == ["nq_open", "humaneval"]
    suite = evaluate(model_dir, tmp_path / "out", workers=1, directory=tmp_path / "empty")
    assert suite.skipped == CHOSEN and suite.results == {} and suite.questions == 0
    assert "Skipped (no data file): arc_easy, humaneval, nq_open." in (tmp_path / "out" / "table3.md").read_text()


def test_a_generated_answer_is_the_greedy_continuation_cut_at_the_stop_sequence(model_dir):
    model, tokenizer = load_model(model_dir, "hf").eval(), load_tokenizer(model_dir)
    generator = Generator(model)
    prompt = "the river is"
    ids = tokenizer.encode(prompt, bos=True)
    [greedy] = generator.generate([ids], 12, temperature=0.0, eos_id=tokenizer.eos_id)
    text = tokenizer.decode(greedy)
    assert generate_until(generator, tokenizer, prompt, (), 12) == text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop and generate_until(generator, tokenizer, prompt, (stop,), 12) == text[: text.find(stop)]
