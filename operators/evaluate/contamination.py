"""The `contamination` stage: how much of each evaluation sample is in the pretraining corpus, and the
benchmark scores on the clean and the dirty samples (Llama 2, Appendix A.6 and Table 51).

    tokens input:      tokens/part-*.arrow (the pretraining corpus, token shards)
    tokenizer input:   tokenizer.model (the one that made those shards)
    evaluation input:  results.json, questions/<benchmark>.jsonl (each question's picks), and in its
                       manifest summary the benchmark_dir whose questions it scored
        -> report.json                  per benchmark and subset: n, avg. contamination %, acc (and
                                        acc_norm where lm-eval reports it), Z_n; corpus totals
        -> samples/part-00000.parquet   per sample: tokens, contaminated tokens, %, subsets, correct

A sample is what lm-eval scores for the question, "fully verbalized" as the paper puts it: the
context plus the gold continuation, encoded without BOS. Its tokens are contaminated where a
10(+)-skipgram match with a corpus document covers them (`skipgram_match` defines the match).

    driver: samples ──> SampleIndex (every sample n-gram, hashed; ray.put once)
      ├── Ray task per token shard: hash every corpus n-gram, verify and extend the seeds it hits
      │       └──> {seed start: furthest match end}   (positions in the samples, never corpus text)
      └── union of the spans per sample ──> contamination % ──> subsets ──> report

Subsets (A.6), overlapping on purpose: Clean < clean_below (20%), Not Clean >= clean_below,
Not Dirty < dirty_from (80%), Dirty >= dirty_from. For each subset of n samples, with X the
per-sample score (1 if the pick is the gold answer): the mean X̄ and Z_n = (X̄ - μ_n) / σ_n, where
μ_n and σ_n² are the mean and variance of the mean score of n samples drawn at random from the
benchmark's N: μ_n = the benchmark's mean, σ_n² = σ²/n · (N - n)/(N - 1) (drawn without replacement,
as a subset is; null where σ_n = 0). The paper calls a benchmark affected by contamination when all
four subsets have |Z_n| > 2 (`affected_z`).

Cost. Each corpus token is hashed once (n multiply-adds on uint64) and checked against a table of
seed-hash prefixes; the ~1.5% that pass are binary-searched among the S seeds (S ≈ the evaluation's
tokens), and a true hit is verified and extended in O(sample length), once per run of equal tokens.
Time O(T·n + hits·sample length) for T corpus tokens; memory per task O(block_tokens + S) (the
index is shared through Ray's object store); driver memory O(S). Measured on one core of the 2-core
development machine (shared, so noisy): 35-85 ns per corpus token with S = 50k-0.9M seeds, 1000
planted copies in 20M tokens included. Llama 2's 2T tokens at ~70 ns would take ~39 core-hours,
plus one read of 4 TB of uint16 shards: ~40 minutes on 64 cores if storage gives them ~1.7 GB/s,
I/O-bound below that (the paper: ~7 hours on 64 cores, suffix-array build included). A corpus suffix
array is not needed because the samples are the small side: indexing them and streaming the corpus
once is the cheaper direction, and the result is the same set of matches. An n-gram of a sample that
is common web boilerplate costs ~10 µs per occurrence (a Python-level extension each).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.tokenizer import Tokenizer, load_tokenizer
from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR, read_questions
from operators.evaluate.loglik import PICKS
from operators.evaluate.skipgram_match import SampleIndex, contaminated_counts, furthest_ends
from operators.formats.damaged import decoding
from operators.formats.tokens import input_token_shards
from operators.stage_io import InputRows, MissingInputError, StageInputError, StageIO, StageStats

log = logging.getLogger(__name__)

SUBSETS = ("clean", "not_clean", "not_dirty", "dirty")

SAMPLES_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("index", pa.int32()), ("tokens", pa.int32()),
    ("contaminated_tokens", pa.int32()), ("contamination_pct", pa.float64()),
    *((subset, pa.bool_()) for subset in SUBSETS),
    ("correct", pa.bool_()),  # the acc pick is the gold answer
    ("correct_norm", pa.bool_()),  # the acc_norm pick is; null where lm-eval reports no acc_norm
])


class ContaminationConfig(BaseModel):
    """Config of the contamination stage."""

    model_config = ConfigDict(extra="forbid")

    # Llama 2, Appendix A.6 (see the module doc of skipgram_match for what a match is).
    min_ngram: int = Field(10, ge=1, description="Shortest match in tokens; its first min_ngram tokens are all equal.")
    max_mismatches: int = Field(4, ge=0, description="Positions a match may differ in (the 'skipgram budget').")
    clean_below: float = Field(0.2, gt=0, le=1, description="Clean: contaminated share below this; Not Clean: rest.")
    dirty_from: float = Field(0.8, gt=0, le=1, description="Dirty: contaminated share from this on; Not Dirty: rest.")
    affected_z: float = Field(
        2.0, gt=0, description="A benchmark counts as affected when all four subsets have |Z_n| above this."
    )
    benchmarks: list[str] | None = Field(
        None, description="Benchmarks to check (None = every one in the evaluation's results.json)."
    )
    block_tokens: int = Field(
        2**22, ge=1, description="Corpus tokens a task hashes at once; a task holds about 30 bytes per block token."
    )

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, names: list[str] | None) -> list[str] | None:
        unknown = sorted(set(names or ()) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}; choose from {sorted(BENCHMARKS)}")
        few_shot = sorted(n for n in names or () if BENCHMARKS[n].fewshot is not None)
        if few_shot:
            raise ValueError(f"{few_shot} are few-shot; contamination checks zero-shot questions only")
        return names

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> ContaminationConfig:
        if self.clean_below > self.dirty_from:
            raise ValueError(f"clean_below ({self.clean_below}) must not exceed dirty_from ({self.dirty_from})")
        return self


class EvaluationInputError(StageInputError):
    """The evaluation input does not match the benchmark files it names (missing, changed, unscored)."""


@dataclass(frozen=True)
class Sample:
    """One scored question: its tokens as the model read them, and whether each metric's pick was right."""

    benchmark: str
    index: int
    tokens: list[int]
    correct: dict[str, bool]  # metric (acc, acc_norm) -> pick == gold


@dataclass(frozen=True)
class CorpusScan:
    """Per sample (in the order given): its contaminated tokens; and how much corpus was read."""

    contaminated: np.ndarray
    documents: int
    tokens: int


@ray.remote
def _scan_shard(path: str, index: SampleIndex, max_mismatches: int, block_tokens: int) -> dict[str, Any]:
    """This shard's matches as (seed starts, furthest ends), and its documents and tokens."""
    with decoding(path):
        reader = pa.ipc.open_file(pa.memory_map(path, "r"))
        columns = [reader.get_batch(b)["tokens"] for b in range(reader.num_record_batches)]  # zero-copy views
    best: dict[int, int] = {}
    documents = tokens = 0
    for column in columns:
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=True)
        for start, end in furthest_ends(index, values, offsets, max_mismatches, block_tokens).items():
            best[start] = max(best.get(start, 0), end)
        documents += len(column)
        tokens += int(offsets[-1] - offsets[0])
    starts = sorted(best)
    return {"starts": np.array(starts, np.int64), "ends": np.array([best[s] for s in starts], np.int64),
            "documents": documents, "tokens": tokens}


def scan_corpus(shards: list[Path], samples: list[list[int]], config: ContaminationConfig) -> CorpusScan:
    """Each sample's contaminated tokens against the token shards, one Ray task per shard."""
    index = SampleIndex.build(samples, config.min_ngram)
    index_ref = ray.put(index)
    # Largest shards first, so the last tasks to finish are short ones.
    order = sorted(range(len(shards)), key=lambda i: (-shards[i].stat().st_size, i))
    refs = {i: _scan_shard.remote(str(shards[i]), index_ref, config.max_mismatches, config.block_tokens) for i in order}
    found = ray.get([refs[i] for i in range(len(shards))])
    spans = [np.concatenate([f[key] for f in found] or [np.zeros(0, np.int64)]) for key in ("starts", "ends")]
    return CorpusScan(contaminated_counts(index, *spans), sum(f["documents"] for f in found),
                      sum(f["tokens"] for f in found))


def evaluation_samples(io: StageIO, config: ContaminationConfig, tokenizer: Tokenizer) -> tuple[list[Sample], Path]:
    """Every question the evaluation input scored, as the model read it, and the folder of their files."""
    evaluation = io.input("evaluation")
    results = evaluation / "results.json"
    if not results.is_file():
        raise MissingInputError(f"no results.json in {evaluation}; run the stage that makes "
                                f"{io.source_of('evaluation')}")
    # The zero-shot multiple-choice benchmarks: a sample is the question itself, without exemplars.
    scored = [name for name in json.loads(results.read_text(encoding="utf-8"))
              if name in BENCHMARKS and BENCHMARKS[name].fewshot is None]
    names = scored if config.benchmarks is None else config.benchmarks
    unscored = [n for n in names if n not in scored or not (evaluation / "questions" / f"{n}.jsonl").is_file()]
    if unscored:
        raise EvaluationInputError(f"contamination.benchmarks: {unscored} not scored by {io.source_of('evaluation')} "
                                   f"(it has {scored}); evaluate them or leave them out")
    directory = Path(io.input_manifest("evaluation").get("summary", {}).get("benchmark_dir") or SHIPPED_DIR)
    samples = []
    for name in names:
        benchmark = BENCHMARKS[name]
        if not (directory / benchmark.file).is_file():
            raise EvaluationInputError(f"{directory / benchmark.file} is gone: the benchmark_dir that "
                                       f"{io.source_of('evaluation')} scored must still hold it")
        lines = (evaluation / "questions" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        questions = list(read_questions(benchmark, directory, max((r["index"] for r in rows), default=-1) + 1))
        for row in rows:
            if row["index"] >= len(questions) or questions[row["index"]].answer != row["gold"]:
                raise EvaluationInputError(
                    f"{name} question {row['index']} of {io.source_of('evaluation')} is not in "
                    f"{directory / benchmark.file} with that answer: the file changed since it was scored; "
                    "re-run the evaluation"
                )
            context, continuation = questions[row["index"]].choices[row["gold"]]
            correct = {metric: row[PICKS[metric]] == row["gold"] for metric in benchmark.metrics if metric in PICKS}
            samples.append(Sample(name, row["index"], tokenizer.encode(context + continuation), correct))
    return samples, directory


def subset_masks(shares: np.ndarray, config: ContaminationConfig) -> dict[str, np.ndarray]:
    """A.6's four overlapping subsets, from each sample's contaminated share."""
    return {"clean": shares < config.clean_below, "not_clean": shares >= config.clean_below,
            "not_dirty": shares < config.dirty_from, "dirty": shares >= config.dirty_from}


def z_score(scores: np.ndarray, member: np.ndarray) -> float | None:
    """Z_n of the subset's mean score against the means of random n-subsets of all N (see the module doc)."""
    total, n = len(scores), int(member.sum())
    if n == 0 or total < 2:
        return None
    spread = scores.var() / n * (total - n) / (total - 1)
    return float((scores[member].mean() - scores.mean()) / math.sqrt(spread)) if spread > 0 else None


def benchmark_report(shares: np.ndarray, correct: dict[str, np.ndarray], config: ContaminationConfig) -> dict[str, Any]:
    """Table 51 for one benchmark: per subset n, avg. contamination %, each metric's mean and Z_n."""
    subsets: dict[str, dict[str, Any]] = {}
    for name, member in {"all": np.ones(len(shares), bool), **subset_masks(shares, config)}.items():
        n = int(member.sum())
        entry: dict[str, Any] = {"n": n, "avg_contamination_pct": 100 * float(shares[member].mean()) if n else None}
        for metric, scores in correct.items():
            entry[metric] = float(scores[member].mean()) if n else None
            entry[f"{metric}_z"] = z_score(scores.astype(np.float64), member) if name != "all" else None
        subsets[name] = entry
    affected = {m: all(abs(subsets[s][f"{m}_z"] or 0.0) > config.affected_z for s in SUBSETS) for m in correct}
    return {"samples": len(shares), "subsets": subsets, "affected": affected}


def samples_table(samples: list[Sample], contaminated: np.ndarray, config: ContaminationConfig) -> pa.Table:
    """One row per sample: its tokens, the contaminated ones and their percentage, its subsets, its picks."""
    lengths = np.array([len(s.tokens) for s in samples], np.int64)
    masks = subset_masks(contaminated / np.maximum(lengths, 1), config)
    columns = {
        "benchmark": [s.benchmark for s in samples], "index": [s.index for s in samples], "tokens": lengths,
        "contaminated_tokens": contaminated, "contamination_pct": 100 * contaminated / np.maximum(lengths, 1),
        **masks,
        "correct": [s.correct.get("acc") for s in samples],
        "correct_norm": [s.correct.get("acc_norm") for s in samples],
    }
    return pa.table(columns, schema=SAMPLES_SCHEMA)


def report_metrics(benchmarks: dict[str, dict[str, Any]]) -> dict[str, float]:
    """contamination/<benchmark>/<subset>_share, .../avg_pct and .../<subset>/<metric> for MLflow."""
    metrics: dict[str, float] = {}
    for name, result in benchmarks.items():
        subsets = result["subsets"]
        metrics[f"contamination/{name}/avg_pct"] = subsets["all"]["avg_contamination_pct"] or 0.0
        metrics.update({f"contamination/{name}/{s}_share": subsets[s]["n"] / result["samples"] for s in SUBSETS})
        metrics.update({f"contamination/{name}/{s}/{m}": entry[m] for s, entry in subsets.items()
                        for m in PICKS if entry.get(m) is not None})
    return metrics


def contamination_figure(shares_by_benchmark: dict[str, np.ndarray], config: ContaminationConfig) -> Figure:
    """How many samples of each benchmark are how contaminated, with the subsets' thresholds."""
    fig = Figure(figsize=(7, 3.5), layout="tight")
    ax = fig.subplots()
    bins = np.linspace(0, 100, 21)
    for name, shares in shares_by_benchmark.items():
        ax.hist(100 * shares, bins=bins, histtype="step", label=name)
    for threshold, label in ((config.clean_below, "clean <"), (config.dirty_from, "dirty ≥")):
        ax.axvline(100 * threshold, color="gray", linestyle="--", linewidth=1)
        ax.annotate(f"{label} {100 * threshold:g}%", (100 * threshold, 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("contaminated tokens of the sample (%)")
    ax.set_ylabel("samples")
    ax.set_title(f"contamination: {config.min_ngram}(+)-token matches, up to {config.max_mismatches} mismatches")
    if shares_by_benchmark:
        ax.legend(fontsize="small")
    return fig


def _tokenizer(io: StageIO) -> Tokenizer:
    """tokenizer.model at the top of the tokenizer input (train_tokenizer) or in its model/ (a pretrain output)."""
    root = io.input("tokenizer")
    for path in (root / "tokenizer.model", root / "model" / "tokenizer.model"):
        if path.is_file():
            return load_tokenizer(path)
    raise MissingInputError(f"no tokenizer.model (nor model/tokenizer.model) in {root}; run the stage that makes "
                            f"{io.source_of('tokenizer')}")


def run_contamination(config: ContaminationConfig, io: StageIO) -> StageStats:
    """Contamination % of every evaluated sample against the `tokens` corpus, and Table 51 (see module doc)."""
    started = time.perf_counter()
    shards = input_token_shards(io, "tokens")
    samples, directory = evaluation_samples(io, config, _tokenizer(io))
    scan = scan_corpus(shards, [s.tokens for s in samples], config)

    table = samples_table(samples, scan.contaminated, config)
    (io.output_dir / "samples").mkdir()
    pq.write_table(table, io.output_dir / "samples" / "part-00000.parquet")
    shares = scan.contaminated / np.maximum(table["tokens"].to_numpy(), 1)
    shares_by_benchmark, benchmarks = {}, {}
    for name in dict.fromkeys(s.benchmark for s in samples):
        mine = np.array([s.benchmark == name for s in samples])
        picked = [m for m in BENCHMARKS[name].metrics if m in PICKS]  # acc, and acc_norm where lm-eval reports it
        correct = {m: np.array([s.correct[m] for s in samples if s.benchmark == name]) for m in picked}
        shares_by_benchmark[name] = shares[mine]
        benchmarks[name] = benchmark_report(shares[mine], correct, config)
    report = {
        "method": {"min_ngram": config.min_ngram, "max_mismatches": config.max_mismatches,
                   "clean_below": config.clean_below, "dirty_from": config.dirty_from, "affected_z": config.affected_z},
        "corpus": {"documents": scan.documents, "tokens": scan.tokens},
        "benchmark_dir": str(directory),
        "benchmarks": benchmarks,
    }
    (io.output_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    io.tracker.log_figure(contamination_figure(shares_by_benchmark, config), "plots/contamination.png")

    counts = {name: {s: r["subsets"][s]["n"] for s in ("all", *SUBSETS)} for name, r in benchmarks.items()}
    log.info("contamination: %d samples against %d corpus tokens; samples per subset: %s", len(samples), scan.tokens,
             counts)
    metrics = report_metrics(benchmarks) | {"contamination/corpus_tokens": scan.tokens,
                                            "time/contamination_s": time.perf_counter() - started}
    return StageStats(
        unit="samples",
        count_in=len(samples),
        count_out=table.num_rows,
        inputs_read=(InputRows("tokens", "tokens/", scan.documents),),
        output_rows={"samples/": table.num_rows},
        metrics=metrics,
        summary={"samples_per_subset": counts, "affected": {n: r["affected"] for n, r in benchmarks.items()}},
    )
