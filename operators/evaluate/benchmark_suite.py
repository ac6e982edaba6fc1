"""The benchmark suite on one model: every question posed, answered by Ray actors, judged, written and aggregated.

The `evaluate` stage, `llama2 evaluate` (any model) and the chat pipeline's evaluations all run this,
so a model scores the same everywhere:

    check     which benchmarks' files are in the folder (the rest are skipped, by name, before any work)
    pose      every question's prompt on the driver, in file order (few-shot draws depend on it)
    answer    chunks of questions dealt to actors holding the model (workers.py): choice log-likelihoods,
              greedy generations cut at the task's stop sequences
    judge     picks (acc, acc_norm), extracted answers against the gold (exact match, F1, equivalence),
              generated programs run in the sandbox (pass@1)
    write     questions/<benchmark>.jsonl   per question: prompt, log-likelihoods or generation,
                                            extracted answer, gold, correct
              table3.md                      Llama 2's Table 3 columns (table3.py)
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operators.evaluate.answers import Answer
from operators.evaluate.benchmarks import Benchmark, Posed, pose
from operators.evaluate.fewshot import HARNESS_SEED
from operators.evaluate.loglik import aggregate, judge
from operators.evaluate.sandbox import SandboxLimits, run_program
from operators.evaluate.table3 import ALL, group_scores, markdown
from operators.evaluate.workers import Chunk, WorkerConfig, answer_all

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteResults:
    results: dict[str, dict[str, Any]]  # benchmark -> its metrics, `examples` and, per subject, `subjects`
    skipped: list[str]  # benchmarks whose file the folder lacks
    questions: int  # questions posed (and judged)
    table3: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> score, ran, of

    def metrics(self) -> dict[str, float]:
        """`eval/<benchmark>/<metric>` and `table3/<column>`, as the stage and `llama2 evaluate` log them."""
        metrics = {f"eval/{name}/{metric}": float(result[metric]) for name, result in self.results.items()
                   for metric in ALL[name].metrics}
        metrics |= {f"table3/{column.lower().replace(' ', '_')}": value["score"] for column, value in self.table3.items()}
        return metrics


@dataclass(frozen=True)
class SuiteSettings:
    """How the suite runs, beyond which benchmarks: actors, few-shot seed, code sandbox, answer length."""

    workers: WorkerConfig = field(default_factory=WorkerConfig)
    batch_size: int = 16  # sequences per forward pass when scoring choices
    seed: int = HARNESS_SEED
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    max_gen_toks: int | None = None  # a cap on every task's own; None: lm-eval's


def missing(names: Sequence[str], directory: Path) -> list[str]:
    """The benchmarks among `names` whose file is not in `directory`."""
    return [name for name in names if not (Path(directory) / ALL[name].file).is_file()]


def run_benchmarks(model_dir: Path, names: Sequence[str], directory: Path, limit: int | None, output_dir: Path,
                   settings: SuiteSettings = SuiteSettings(), model_name: str = "model") -> SuiteResults:
    """Judge the model in `model_dir` on the first `limit` questions (per subject where a benchmark has
    subjects; None: all) of each named benchmark in `directory`; write questions/ and table3.md."""
    skipped = missing(names, directory)
    for name in skipped:
        log.warning("evaluate: skipping %s: %s not found in %s", name, ALL[name].file, directory)
    posed = {name: pose(ALL[name], directory, limit, settings.seed) for name in names if name not in skipped}
    chunks = [chunk for name, items in posed.items() for chunk in _chunks(ALL[name], items, settings)]
    answers: dict[str, list[Any]] = {name: [None] * len(items) for name, items in posed.items()}
    done: dict[str, int] = defaultdict(int)
    for chunk, answered in answer_all(model_dir, chunks, settings.workers, settings.batch_size):
        answers[chunk.benchmark][chunk.start : chunk.start + len(answered)] = answered
        done[chunk.benchmark] += len(answered)
        log.info("evaluate: %-14s %d/%d questions answered", chunk.benchmark, done[chunk.benchmark],
                 len(posed[chunk.benchmark]))

    questions_dir = output_dir / "questions"
    questions_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name, items in posed.items():
        benchmark = ALL[name]
        rows = (_choice_rows(benchmark, items, answers[name]) if benchmark.kind == "choice"
                else generated_rows(benchmark, items, answers[name], settings.sandbox))
        (questions_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        results[name] = _aggregate(benchmark, items, rows)
        log.info("evaluate: %-14s %s  (%d questions)", name,
                 "  ".join(f"{m} {results[name][m]:.3f}" for m in benchmark.metrics), len(items))
    table = group_scores(results)
    (output_dir / "table3.md").write_text(markdown(model_name, results, skipped), encoding="utf-8")
    return SuiteResults(results, skipped, sum(len(items) for items in posed.values()), table)


def _chunks(benchmark: Benchmark, items: list[Posed], settings: SuiteSettings) -> list[Chunk]:
    size = settings.workers.chunk_size
    if benchmark.kind == "choice":
        return [Chunk(benchmark.name, start, choices=tuple(benchmark.question(p.row, p.prompt).choices
                                                           for p in items[start : start + size]))
                for start in range(0, len(items), size)]
    generation = benchmark.generation
    length = min(generation.max_gen_toks, settings.max_gen_toks or generation.max_gen_toks)
    return [Chunk(benchmark.name, start, prompts=tuple(p.prompt for p in items[start : start + size]),
                  until=generation.until, max_gen_toks=length) for start in range(0, len(items), size)]


def _choice_rows(benchmark: Benchmark, items: list[Posed], logliks: list[list[float]]) -> list[dict]:
    return [dict(judge(item.index, benchmark.question(item.row, item.prompt), scores))
            for item, scores in zip(items, logliks)]


def generated_rows(benchmark: Benchmark, items: list[Posed], texts: list[str], limits: SandboxLimits) -> list[dict]:
    """Each generated answer judged: extracted and scored, or (code) its program run in the sandbox."""
    generation = benchmark.generation
    if generation.program is not None:
        programs = [generation.program(item.row, text) for item, text in zip(items, texts)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            outcomes = list(pool.map(lambda source: run_program(source, limits), programs))
        answers = [Answer(text, "", {"pass_at_1": float(outcome.passed)}) for text, outcome in zip(texts, outcomes)]
        extra = [{"program": p, "outcome": o.reason} for p, o in zip(programs, outcomes)]
    else:
        answers = [generation.score(item.row, text) for item, text in zip(items, texts)]
        extra = [{} for _ in items]
    return [{"index": item.index, "prompt": item.prompt, "generation": text, "extracted": answer.extracted,
             "gold": answer.gold, "correct": answer.correct, **answer.metrics, **more}
            for item, text, answer, more in zip(items, texts, answers, extra)]


def _aggregate(benchmark: Benchmark, items: list[Posed], rows: list[dict]) -> dict[str, Any]:
    if benchmark.kind == "choice":
        result: dict[str, Any] = aggregate(rows, benchmark.metrics)
    else:
        result = {m: statistics.fmean(r[m] for r in rows) if rows else 0.0 for m in benchmark.metrics}
        result["examples"] = len(rows)
    if benchmark.subject:
        by_subject: dict[str, list[bool]] = defaultdict(list)
        for item, row in zip(items, rows):
            by_subject[item.row[benchmark.subject]].append(bool(row["correct"]))
        result["subjects"] = {s: statistics.fmean(v) for s, v in sorted(by_subject.items())}
    return result

