"""The zero-shot benchmarks on one model: each benchmark's questions scored, written and aggregated.

The `evaluate` stage and `llama2 evaluate` (any model) both run this, so a model scores the same
either way:

    questions/<benchmark>.jsonl   per question: choice log-likelihoods, lengths, picks, gold
    results                       per benchmark: acc (and acc_norm where lm-eval reports it), chance, examples

A benchmark whose file is not in the folder is skipped and named in `skipped`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.tokenizer import Tokenizer
from operators.evaluate.benchmarks import BENCHMARKS, read_questions
from operators.evaluate.loglik import PICKS, aggregate, question_results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteResults:
    results: dict[str, dict[str, float]]  # benchmark -> its aggregate (`loglik.aggregate`)
    skipped: list[str]  # benchmarks whose file the folder lacks
    questions: int  # questions read (and scored)

    def metrics(self) -> dict[str, float]:
        """`eval/<benchmark>/acc` (and `/acc_norm`), as the stage and `llama2 evaluate` log them."""
        return {f"eval/{name}/{metric}": value for name, result in self.results.items()
                for metric, value in result.items() if metric in PICKS}


def run_benchmarks(
    model: torch.nn.Module, tokenizer: Tokenizer, names: Sequence[str], directory: Path, limit: int | None,
    batch_size: int, questions_dir: Path,
) -> SuiteResults:
    """Score the first `limit` questions (all: None) of each named benchmark in `directory`; write each
    question's row to `questions_dir/<benchmark>.jsonl`."""
    skipped = [name for name in names if not (directory / BENCHMARKS[name].file).is_file()]
    results: dict[str, dict[str, float]] = {}
    questions_in = 0
    questions_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        benchmark = BENCHMARKS[name]
        if name in skipped:
            log.warning("evaluate: skipping %s: %s not found in %s", name, benchmark.file, directory)
            continue
        questions = list(read_questions(benchmark, directory, limit))
        questions_in += len(questions)
        rows = question_results(model, questions, tokenizer.encode, tokenizer.bos_id, model.args.max_seq_len,
                                batch_size)
        (questions_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results[name] = aggregate(rows, benchmark.metrics)
        log.info("evaluate: %-14s %s  (%d questions)", name,
                 "  ".join(f"{m} {results[name][m]:.3f}" for m in (*benchmark.metrics, "chance")), len(questions))
    return SuiteResults(results, skipped, questions_in)
