"""The contamination stage (Llama 2, Appendix A.6): overlaps planted in a tiny token corpus give exactly
the contaminated tokens the paper's match says (n >= 10 tokens, the first 10 equal, at most 4
mismatches, none trailing, inside one document); the four overlapping subsets, their scores and Z_n;
and the whole stage on a hand-made evaluation output."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from model.tokenizer import load_tokenizer
from operators.evaluate.contamination import (
    ContaminationConfig,
    EvaluationInputError,
    benchmark_report,
    evaluation_samples,
    run_contamination,
    scan_corpus,
    subset_masks,
)
from operators.stage_io import StageIO
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines
from tests.pretrain.token_shards import write_token_shards
from tests.recording_tracker import RecordingTracker

_unused = itertools.count(1000)  # token ids that occur nowhere else, so nothing matches by accident


def fresh(n: int) -> list[int]:
    return [next(_unused) for _ in range(n)]


SAMPLE = fresh(20)


def replaced(tokens: list[int], positions: tuple[int, ...]) -> list[int]:
    """`tokens` with a token found nowhere else at each of `positions`."""
    return [next(_unused) if i in positions else t for i, t in enumerate(tokens)]


def contaminated(tmp_path: Path, samples: list[list[int]], shards: list[list[list[int]]], **config) -> list[int]:
    """Contaminated tokens per sample against shards of documents (bodies; BOS/EOS are added)."""
    docs = [[(f"doc-{i}-{j}", "web", body) for j, body in enumerate(shard)] for i, shard in enumerate(shards)]
    paths = write_token_shards(tmp_path, docs)
    return scan_corpus(paths, samples, ContaminationConfig(**config)).contaminated.tolist()


def test_a_sample_copied_whole_into_a_document_is_contaminated_in_every_token(tmp_path, ray_local):
    assert contaminated(tmp_path, [SAMPLE], [[fresh(5) + SAMPLE + fresh(5)]]) == [20]


def test_a_copied_middle_of_12_tokens_contaminates_exactly_those_12(tmp_path, ray_local):
    assert contaminated(tmp_path, [SAMPLE], [[fresh(3) + SAMPLE[4:16] + fresh(3)]]) == [12]


@pytest.mark.parametrize("mismatches, expected", [
    ((12, 14, 16), 20),  # 3 mismatches: the whole span is one match
    ((11, 12, 13, 14), 20),  # 4, the whole budget
    ((11, 13, 15, 17, 18), 17),  # 5: the match ends on the last equal token before the fifth (16)
])
def test_a_match_may_differ_in_at_most_max_mismatches_positions(tmp_path, ray_local, mismatches, expected):
    assert contaminated(tmp_path, [SAMPLE], [[replaced(SAMPLE, mismatches)]]) == [expected]


def test_no_mismatch_is_allowed_in_the_first_min_ngram_tokens_of_a_match(tmp_path, ray_local):
    # One mismatch is within the budget, but at position 5 it leaves only the match 6..19.
    assert contaminated(tmp_path, [SAMPLE], [[replaced(SAMPLE, (5,))]]) == [14]


def test_trailing_mismatches_are_not_part_of_a_match(tmp_path, ray_local):
    assert contaminated(tmp_path, [SAMPLE], [[replaced(SAMPLE, (18, 19))]]) == [18]


@pytest.mark.parametrize("overlap, expected", [(9, 0), (10, 10)])
def test_an_overlap_shorter_than_min_ngram_does_not_count(tmp_path, ray_local, overlap, expected):
    assert contaminated(tmp_path, [SAMPLE], [[fresh(4) + SAMPLE[:overlap] + fresh(4)]]) == [expected]


def test_min_ngram_and_max_mismatches_come_from_the_config(tmp_path, ray_local):
    shards = [[replaced(SAMPLE, (8, 10, 12))]]  # equal runs of 8, 1, 1 and 7 tokens
    assert contaminated(tmp_path, [SAMPLE], shards) == [0]
    assert contaminated(tmp_path / "strict", [SAMPLE], shards, min_ngram=8, max_mismatches=1) == [10]
    assert contaminated(tmp_path / "loose", [SAMPLE], shards, min_ngram=8, max_mismatches=3) == [20]


def test_a_match_does_not_run_on_into_the_next_document(tmp_path, ray_local):
    # End to end the shard reads ... s0..s12 EOS BOS s15..s19 ...: one diagonal with two mismatches.
    shards = [[fresh(3) + SAMPLE[:13], SAMPLE[15:] + fresh(3)]]
    assert contaminated(tmp_path, [SAMPLE], shards) == [13]


def test_an_n_gram_never_spans_two_samples(tmp_path, ray_local):
    first, second = fresh(12), fresh(12)
    assert contaminated(tmp_path, [first, second], [[first[-5:] + second[:5]]]) == [0, 0]


def test_overlapping_matches_from_different_shards_count_each_token_once(tmp_path, ray_local):
    shards = [[SAMPLE[:12]], [fresh(2) + SAMPLE[5:17]]]
    assert contaminated(tmp_path, [SAMPLE], shards) == [17]


def test_the_contaminated_tokens_do_not_depend_on_the_hashing_block_size(tmp_path, ray_local):
    long, short = fresh(30), fresh(15)
    shards = [
        [fresh(7) + long[:12] + fresh(2) + long[14:], replaced(SAMPLE, (3, 15))],  # 2 mismatches; SAMPLE[4:]
        [short + fresh(1), fresh(40)],
    ]
    expected = contaminated(tmp_path / "big", [SAMPLE, long, short], shards)
    assert expected == [16, 30, 15]
    assert contaminated(tmp_path / "small", [SAMPLE, long, short], shards, block_tokens=3) == expected


def test_the_subsets_are_strictly_below_clean_below_and_from_dirty_from_on():
    shares = np.array([0, 0.19, 2 / 10, 0.5, 0.79, 4 / 5, 1])
    masks = {name: mask.tolist() for name, mask in subset_masks(shares, ContaminationConfig()).items()}
    assert masks == {
        "clean": [True, True, False, False, False, False, False],
        "not_clean": [False, False, True, True, True, True, True],
        "not_dirty": [True, True, True, True, True, False, False],
        "dirty": [False, False, False, False, False, True, True],
    }


def test_each_subset_is_scored_on_its_own_samples_with_the_papers_z_statistic():
    shares = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 0.0])
    correct = np.array([False, True, True, True, True, False])
    report = benchmark_report(shares, {"acc": correct}, ContaminationConfig())["subsets"]

    assert {name: (s["n"], s["acc"]) for name, s in report.items()} == {
        "all": (6, 4 / 6), "clean": (3, 1 / 3), "not_clean": (3, 1.0), "not_dirty": (4, 2 / 4), "dirty": (2, 1.0),
    }
    assert report["clean"]["n"] + report["not_clean"]["n"] == report["not_dirty"]["n"] + report["dirty"]["n"] == 6
    assert report["dirty"]["avg_contamination_pct"] == pytest.approx(95.0)
    # Mean of 2 of the 6 drawn at random: mu = 4/6, var = (4/6)(2/6)/2 * (6-2)/(6-1).
    sigma = math.sqrt((4 / 6) * (2 / 6) / 2 * 4 / 5)
    assert report["dirty"]["acc_z"] == pytest.approx((1.0 - 4 / 6) / sigma)
    assert report["all"]["acc_z"] is None


@pytest.mark.parametrize("correct_when_dirty, affected", [(True, True), (None, False)])
def test_a_benchmark_is_affected_only_when_all_four_subsets_are_beyond_affected_z(correct_when_dirty, affected):
    shares = np.repeat([0.0, 1.0], 50)
    # Correct exactly on the dirty samples, or on every other sample whatever its contamination.
    correct = shares == 1.0 if correct_when_dirty else np.arange(100) % 2 == 0
    report = benchmark_report(shares, {"acc": correct}, ContaminationConfig())
    assert report["affected"] == {"acc": affected}


def test_the_config_checks_its_thresholds_and_benchmark_names():
    with pytest.raises(ValidationError, match="clean_below"):
        ContaminationConfig(clean_below=0.9, dirty_from=0.8)
    with pytest.raises(ValidationError, match="unknown benchmarks"):
        ContaminationConfig(benchmarks=["mmlu_pro"])


# --- the whole stage on a hand-made evaluation output ------------------------------------------------

QUESTIONS = [  # arc_easy-style rows; the gold choice is what lm-eval scores after the question
    ("Which planet is closest to the Sun in our solar system, and so has the shortest year of all?",
     ["Mercury", "Venus", "Mars"], 0),
    ("What do green plants release into the air around them during photosynthesis in daylight?",
     ["carbon dioxide", "oxygen", "nitrogen"], 1),
    ("Which tool is best for measuring the length of a pencil on a desk in a classroom?",
     ["a ruler", "a scale", "a thermometer"], 0),
    ("What happens to liquid water in an open cup when it is cooled below zero degrees Celsius?",
     ["it boils", "it freezes"], 1),
]
SAMPLE_TEXTS = [f"Question: {q}\nAnswer: {choices[gold]}" for q, choices, gold in QUESTIONS]
# (share of the sample's tokens copied into the corpus, acc pick right, acc_norm pick right)
PLANTED = [(1.0, True, True), (0.5, False, False), (0.0, True, True), (0.9, True, False)]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict:
    """Token shards with the questions' samples planted in part, their tokenizer, an evaluation output."""
    root = tmp_path_factory.mktemp("contamination")
    # Whole words as pieces (20-26 per sample), so that the samples share no 10 tokens by their format alone.
    tokenizer = load_tokenizer(train_llama_tokenizer(root / "tokenizer", word_lines() + SAMPLE_TEXTS * 20, 700))
    samples = [tokenizer.encode(text) for text in SAMPLE_TEXTS]
    copied = [math.ceil(share * len(s)) for s, (share, _, _) in zip(samples, PLANTED)]
    filler = [(f"filler-{i}", "web", tokenizer.encode(line)) for i, line in enumerate(word_lines(40, seed=1))]
    planted = [(f"planted-{i}", "web", tokenizer.encode("the river data") + s[:k] + tokenizer.encode("café 12"))
               for i, (s, k) in enumerate(zip(samples, copied)) if k]
    write_token_shards(root / "tokenize", [filler[:20] + planted[:2], planted[2:] + filler[20:]])

    benchmark_dir = root / "benchmarks"
    benchmark_dir.mkdir()
    (benchmark_dir / "arc_easy.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "split": "test", "question": q, "choices": c, "answer_index": gold}) + "\n"
        for i, (q, c, gold) in enumerate(QUESTIONS)))
    evaluation = root / "evaluate"
    (evaluation / "questions").mkdir(parents=True)
    rows = [{"index": i, "gold": gold, "logliks": [-1.0] * len(c), "lengths": [len(t) for t in c],
             "pick_acc": gold if acc else (gold + 1) % len(c), "pick_acc_norm": gold if norm else (gold + 1) % len(c)}
            for i, ((_, c, gold), (_, acc, norm)) in enumerate(zip(QUESTIONS, PLANTED))]
    (evaluation / "questions" / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (evaluation / "results.json").write_text(json.dumps({"arc_easy": {"acc": 0.75, "examples": 4}, "validation": {}}))
    (evaluation / "manifest.json").write_text(json.dumps({"summary": {"benchmark_dir": str(benchmark_dir)}}))
    inputs = {"tokens": root / "tokenize", "tokenizer": root / "tokenizer", "evaluation": evaluation}
    return {"inputs": inputs, "samples": samples, "copied": copied, "documents": len(filler) + len(planted)}


def stage_io(directory: Path, inputs: dict[str, Path], **fields) -> StageIO:
    directory.mkdir()
    return StageIO(directory, inputs, stage="contamination", **fields)


@pytest.fixture(scope="module")
def contaminated_run(upstream, tmp_path_factory, ray_local):
    tracker = RecordingTracker()
    io = stage_io(tmp_path_factory.mktemp("run") / "out", upstream["inputs"], tracker=tracker)
    return io.output_dir, run_contamination(ContaminationConfig(), io), tracker


def test_each_sample_row_has_its_planted_share_and_subsets(upstream, contaminated_run):
    out, _, _ = contaminated_run
    rows = pq.read_table(out / "samples" / "part-00000.parquet").to_pylist()
    lengths = [len(s) for s in upstream["samples"]]
    assert [(r["benchmark"], r["index"], r["tokens"], r["contaminated_tokens"]) for r in rows] == [
        ("arc_easy", i, n, k) for i, (n, k) in enumerate(zip(lengths, upstream["copied"]))
    ]
    assert [r["contamination_pct"] for r in rows] == [100 * k / n for n, k in zip(lengths, upstream["copied"])]
    assert [[r[s] for s in ("clean", "not_clean", "not_dirty", "dirty")] for r in rows] == [
        [False, True, False, True], [False, True, True, False], [True, False, True, False], [False, True, False, True],
    ]
    assert [(r["correct"], r["correct_norm"]) for r in rows] == [(acc, norm) for _, acc, norm in PLANTED]


def test_the_report_gives_each_subsets_count_and_scores_as_in_table_51(contaminated_run):
    out, _, _ = contaminated_run
    subsets = json.loads((out / "report.json").read_text())["benchmarks"]["arc_easy"]["subsets"]
    assert {name: (s["n"], s["acc"], s["acc_norm"]) for name, s in subsets.items()} == {
        "all": (4, 3 / 4, 2 / 4),
        "clean": (1, 1.0, 1.0),  # question 2
        "not_clean": (3, 2 / 3, 1 / 3),  # 0, 1, 3
        "not_dirty": (2, 1 / 2, 1 / 2),  # 1, 2
        "dirty": (2, 1.0, 1 / 2),  # 0, 3
    }


def test_the_stage_reports_its_counts_the_corpus_it_read_and_its_metrics(upstream, contaminated_run):
    _, stats, tracker = contaminated_run
    assert (stats.unit, stats.count_in, stats.count_out, stats.rejected) == ("samples", 4, 4, {})
    assert stats.output_rows == {"samples/": 4}
    assert [(r.role, r.prefix, r.rows) for r in stats.inputs_read] == [("tokens", "tokens/", upstream["documents"])]
    assert stats.metrics["contamination/arc_easy/dirty_share"] == 0.5
    assert stats.metrics["contamination/arc_easy/clean/acc"] == 1.0
    assert set(tracker.figures) == {"plots/contamination.png"}


def test_the_same_inputs_give_byte_identical_outputs(upstream, contaminated_run, tmp_path):
    out, _, _ = contaminated_run
    again = stage_io(tmp_path / "again", upstream["inputs"])
    run_contamination(ContaminationConfig(), again)
    for name in ("report.json", "samples/part-00000.parquet"):
        assert (again.output_dir / name).read_bytes() == (out / name).read_bytes()


def test_a_question_whose_benchmark_file_changed_since_the_evaluation_is_refused(upstream, tmp_path):
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    for name in ("results.json", "manifest.json"):
        (evaluation / name).write_bytes((upstream["inputs"]["evaluation"] / name).read_bytes())
    (evaluation / "questions").mkdir()
    row = {"index": 0, "gold": 2, "logliks": [-1.0] * 3, "lengths": [1] * 3, "pick_acc": 2, "pick_acc_norm": 2}
    (evaluation / "questions" / "arc_easy.jsonl").write_text(json.dumps(row) + "\n")
    io = stage_io(tmp_path / "out", {**upstream["inputs"], "evaluation": evaluation})
    tokenizer = load_tokenizer(upstream["inputs"]["tokenizer"])
    with pytest.raises(EvaluationInputError, match="question 0"):
        evaluation_samples(io, ContaminationConfig(), tokenizer)
