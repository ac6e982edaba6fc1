"""The evaluate stage on a pretrain-shaped output: held-out perplexity on the split the model's training
recorded, per-question benchmark results and their aggregates, skipped benchmarks, samples."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from model.args import get_config
from model.chat_template import llama2_chat_template
from model.convert import load_model, write_checkpoint
from model.hf_format import write_tokenizer_files
from model.llama import Transformer
from model.tokenizer import load_tokenizer
from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR, read_questions
from operators.evaluate.stage import TAG_SKIPPED, EvaluateConfig, benchmark_files, run_evaluate
from operators.formats.tokens import TokenCorpus, token_shards, validation_batches
from operators.stage_io import MissingInputError, StageIO
from tests.model.tiny_tokenizer import train_llama_tokenizer
from tests.pretrain.token_shards import write_token_shards
from tests.recording_tracker import RecordingTracker

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "To install the package, run pip install with the name of the package.",
    "In this tutorial we write a small web application step by step.",
    "Question: what is the boiling point of water? Answer: one hundred degrees.",
] * 50
VOCAB = 400
# Not the pretrain defaults, so a stage that ignored data_split.json would hold out other documents.
SPLIT = {"seed": 3, "validation_fraction": 0.2, "seq_len": 32}
EXAMPLES = 10
PROMPTS = ["The", "To install"]
ZERO_SHOT = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande"]  # shipped, multiple choice


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, Path]:
    """A pretrain output (a random tiny model, its tokenizer, data_split.json) and the token shards it trained on."""
    root = tmp_path_factory.mktemp("evaluate")
    tokenizer = load_tokenizer(train_llama_tokenizer(root / "spm", TEXT, VOCAB))
    docs = [(f"doc-{i}", "web", tokenizer.encode(t)) for i, t in enumerate(TEXT)]
    write_token_shards(root / "tokenize", [docs[:100], docs[100:]])

    trained = root / "pretrain"
    torch.manual_seed(0)
    args = get_config("tiny").replace(vocab_size=VOCAB, max_seq_len=256)
    model = Transformer(args)
    model.init_weights()
    write_checkpoint(trained / "model", "hf", args, model.state_dict())
    write_tokenizer_files(trained / "model", tokenizer, llama2_chat_template(tokenizer))
    (trained / "data_split.json").write_text(json.dumps(SPLIT))
    return {"model": trained, "tokens": root / "tokenize"}


def stage_io(tmp_path: Path, inputs: dict[str, Path], **fields) -> StageIO:
    out = tmp_path / "out"
    out.mkdir()
    return StageIO(out, inputs, stage="evaluate", **fields)


@pytest.fixture(scope="module")
def evaluated(upstream, tmp_path_factory, ray_local):
    """One evaluation of the zero-shot multiple-choice benchmarks, EXAMPLES questions each: (output dir, stats,
    tracker)."""
    tracker = RecordingTracker()
    io = stage_io(tmp_path_factory.mktemp("evaluated"), upstream, tracker=tracker,
                  producers={"model": "pretrain", "tokens": "tokenize"})
    config = EvaluateConfig(benchmarks=ZERO_SHOT, max_examples=EXAMPLES, max_new_tokens=8, prompts=PROMPTS,
                            device="cpu")
    return io.output_dir, run_evaluate(config, io), tracker


def rows(out: Path, benchmark: str) -> list[dict]:
    return [json.loads(line) for line in (out / "questions" / f"{benchmark}.jsonl").read_text().splitlines()]


def test_perplexity_is_measured_on_the_held_out_split_that_data_split_json_records(evaluated, upstream):
    out, _, _ = evaluated
    reported = json.loads((out / "results.json").read_text())["validation"]

    model = load_model(upstream["model"] / "model", "hf").eval()
    corpus = TokenCorpus.open(token_shards(upstream["tokens"]), SPLIT["seed"], SPLIT["validation_fraction"])
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for inputs, targets in validation_batches(corpus, SPLIT["seq_len"], batch_size=8):
            nll += F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="sum").item()
            tokens += targets.numel()
    assert reported["tokens"] == tokens == corpus.validation.num_windows(SPLIT["seq_len"]) * SPLIT["seq_len"] > 0
    assert reported["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert 0.8 * VOCAB < reported["perplexity"] < 1.25 * VOCAB  # a random model is about uniform


@pytest.mark.parametrize("benchmark", ZERO_SHOT)
def test_each_question_has_a_row_in_order_with_picks_that_follow_its_log_likelihoods(evaluated, benchmark):
    out, _, _ = evaluated
    questions = list(read_questions(BENCHMARKS[benchmark], SHIPPED_DIR, EXAMPLES))
    found = rows(out, benchmark)
    assert [r["index"] for r in found] == list(range(EXAMPLES))
    assert [r["gold"] for r in found] == [q.answer for q in questions]
    for row, question in zip(found, questions):
        assert len(row["logliks"]) == len(question.texts) and all(ll < 0 for ll in row["logliks"])
        assert row["lengths"] == [len(t) for t in question.texts]
        assert row["pick_acc"] == max(range(len(row["logliks"])), key=row["logliks"].__getitem__)
        per_char = [ll / n for ll, n in zip(row["logliks"], row["lengths"])]
        assert row["pick_acc_norm"] == max(range(len(per_char)), key=per_char.__getitem__)


@pytest.mark.parametrize("benchmark", ZERO_SHOT)
def test_results_json_aggregates_are_the_means_of_the_per_question_picks(evaluated, benchmark):
    out, stats, _ = evaluated
    result = json.loads((out / "results.json").read_text())[benchmark]
    found = rows(out, benchmark)
    expected = {m: sum(r[f"pick_{m}"] == r["gold"] for r in found) / len(found) for m in BENCHMARKS[benchmark].metrics}
    expected |= {"chance": sum(1 / len(r["logliks"]) for r in found) / len(found), "examples": EXAMPLES}
    assert result == pytest.approx(expected)
    for metric in BENCHMARKS[benchmark].metrics:
        assert stats.metrics[f"eval/{benchmark}/{metric}"] == result[metric]


def test_stats_count_the_questions_and_record_that_nothing_was_skipped(evaluated):
    _, stats, tracker = evaluated
    assert (stats.unit, stats.count_in, stats.count_out) == ("questions", 6 * EXAMPLES, 6 * EXAMPLES)
    assert stats.summary["skipped_benchmarks"] == []
    assert stats.metrics["eval/skipped_benchmarks"] == 0
    assert tracker.tags[TAG_SKIPPED] == "none"


def test_samples_are_written_for_every_prompt_and_logged_to_the_tracker(evaluated):
    out, _, tracker = evaluated
    text = (out / "generations.txt").read_text(encoding="utf-8")
    assert [line for line in text.splitlines() if line.startswith("### ")] == [f"### {p}" for p in PROMPTS]
    assert tracker.texts == {"generations.txt": text}


def test_a_benchmark_missing_from_the_users_folder_is_skipped_and_recorded(upstream, tmp_path, caplog, ray_local):
    mine = tmp_path / "benchmarks"
    mine.mkdir()
    for name in ("arc_easy", "boolq"):
        shutil.copy(SHIPPED_DIR / BENCHMARKS[name].file, mine)
    tracker = RecordingTracker()
    io = stage_io(tmp_path, upstream, tracker=tracker)
    config = EvaluateConfig(benchmark_dir=str(mine), benchmarks=ZERO_SHOT, max_examples=3, max_new_tokens=2,
                            prompts=["The"], device="cpu")
    with caplog.at_level(logging.WARNING, logger="operators.evaluate.benchmark_suite"):
        stats = run_evaluate(config, io)

    skipped = ["arc_challenge", "hellaswag", "piqa", "winogrande"]
    assert tracker.tags[TAG_SKIPPED] == ",".join(skipped)
    assert stats.metrics["eval/skipped_benchmarks"] == 4
    assert stats.summary["skipped_benchmarks"] == skipped
    assert all(f"skipping {name}" in caplog.text for name in skipped)
    assert sorted(p.name for p in (io.output_dir / "questions").iterdir()) == ["arc_easy.jsonl", "boolq.jsonl"]
    assert sorted(json.loads((io.output_dir / "results.json").read_text())) == ["arc_easy", "boolq", "table3",
                                                                                "validation"]
    assert stats.count_in == stats.count_out == 6


def test_a_users_benchmark_files_are_identified_by_path_size_and_mtime_for_the_fingerprint(tmp_path):
    shutil.copy(SHIPPED_DIR / BENCHMARKS["boolq"].file, tmp_path)
    boolq = tmp_path / BENCHMARKS["boolq"].file
    config = EvaluateConfig(benchmark_dir=str(tmp_path), benchmarks=["arc_easy", "boolq"])
    assert benchmark_files(config) == [[str(boolq), boolq.stat().st_size, boolq.stat().st_mtime_ns]]
    assert benchmark_files(EvaluateConfig()) is None  # the shipped subsets are part of the code hash


def test_a_benchmark_dir_that_does_not_exist_is_refused_by_name(tmp_path):
    with pytest.raises(MissingInputError, match=r"evaluate\.benchmark_dir: no such folder .*nowhere"):
        benchmark_files(EvaluateConfig(benchmark_dir=str(tmp_path / "nowhere")))


def test_the_model_role_may_be_fed_by_a_stage_not_called_pretrain(upstream, tmp_path, ray_local):
    trained = tmp_path / "store" / "small" / "train_small" / "5a5a5a5a"
    shutil.copytree(upstream["model"], trained)
    io = stage_io(tmp_path, {"model": trained, "tokens": upstream["tokens"]},
                  producers={"model": "train_small", "tokens": "tokenize_small"})
    config = EvaluateConfig(benchmarks=["boolq"], max_examples=3, max_new_tokens=2, prompts=["The"], device="cpu")
    stats = run_evaluate(config, io)
    assert stats.count_out == 3
    assert json.loads((io.output_dir / "results.json").read_text())["validation"]["tokens"] > 0


def test_a_model_input_without_a_model_names_the_stage_that_should_have_made_it(upstream, tmp_path):
    trained = tmp_path / "train_small"
    trained.mkdir()
    (trained / "data_split.json").write_text(json.dumps(SPLIT))
    io = stage_io(tmp_path, {"model": trained, "tokens": upstream["tokens"]}, producers={"model": "train_small"})
    with pytest.raises(MissingInputError, match=r"has no model/config\.json .* the model input \(stage train_small\)"):
        run_evaluate(EvaluateConfig(device="cpu"), io)


def test_an_unwired_tokens_role_is_named(upstream, tmp_path):
    io = stage_io(tmp_path, {"model": upstream["model"]})
    with pytest.raises(MissingInputError, match=r"reads a 'tokens' input, but its pipeline wires only: model"):
        run_evaluate(EvaluateConfig(device="cpu"), io)


def test_an_unknown_benchmark_is_refused_by_name():
    with pytest.raises(ValidationError, match=r"unknown benchmarks \['mmlu_pro'\]"):
        EvaluateConfig(benchmarks=["mmlu_pro"])
