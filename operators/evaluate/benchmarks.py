"""Zero-shot multiple-choice benchmarks as (context, continuation) choices, in lm-evaluation-harness's prompts.

Each example becomes a `Question`: one (context, continuation) pair per choice and the index
of the right one. The model's answer is the choice whose continuation it finds most likely.
Most tasks share the context and vary the continuation; WinoGrande does the opposite ("partial
evaluation": each option fills the blank, and the shared rest of the sentence is scored).

Files are JSONL as in `../shared/data/eval/` (see its PROVENANCE.md for fields and licenses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Question:
    choices: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    answer: int


def _arc(row: dict) -> Question:
    context = f"Question: {row['question']}\nAnswer:"
    return Question(tuple((context, f" {c}") for c in row["choices"]), int(row["answer_index"]))


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> Question:
    context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return Question(tuple((context, " " + _hellaswag_text(e)) for e in row["endings"]), int(row["label"]))


def _piqa(row: dict) -> Question:
    context = f"Question: {row['goal']}\nAnswer:"
    return Question(((context, f" {row['sol1']}"), (context, f" {row['sol2']}")), int(row["label"]))


def _boolq(row: dict) -> Question:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return Question(((context, " no"), (context, " yes")), int(bool(row["answer"])))


def _winogrande(row: dict) -> Question:
    sentence = row["sentence"]
    blank = sentence.index("_")
    rest = " " + sentence[blank + 1 :].strip()
    options = (row["option1"], row["option2"])
    return Question(tuple((sentence[:blank] + o, rest) for o in options), int(row["answer"]) - 1)


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    split: str  # the split lm-evaluation-harness reports
    parse: Callable[[dict], Question]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("arc_easy", "arc_easy.jsonl", "test", _arc),
        Benchmark("arc_challenge", "arc_challenge.jsonl", "test", _arc),
        Benchmark("hellaswag", "hellaswag.jsonl", "validation", _hellaswag),
        Benchmark("piqa", "piqa.jsonl", "validation", _piqa),
        Benchmark("boolq", "boolq.jsonl", "validation", _boolq),
        Benchmark("winogrande", "winogrande.jsonl", "validation", _winogrande),
    )
}


def read_questions(benchmark: Benchmark, directory: Path, limit: int | None = None) -> Iterator[Question]:
    """The first `limit` questions of the benchmark's split, in file order."""
    count = 0
    with open(Path(directory) / benchmark.file, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("split", benchmark.split) != benchmark.split:
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            yield benchmark.parse(row)
