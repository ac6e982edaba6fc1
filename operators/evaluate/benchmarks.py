"""Zero-shot multiple-choice benchmarks as (context, continuation) choices, in lm-evaluation-harness's prompts.

Each example becomes a `Question`: one (context, continuation) pair per choice, each choice's
text as lm-eval's `doc_to_choice` gives it, and the index of the right one. The model's answer
is the choice whose continuation it finds most likely. Most tasks share the context and vary the
continuation; WinoGrande does the opposite ("partial evaluation": each option fills the blank,
and the shared rest of the sentence is scored).

Files are JSONL with the datasets' own fields plus `split`. `SHIPPED_DIR` holds 100-question
subsets of all six (licenses in its PROVENANCE.md); full files live in `../shared/data/eval/`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "data"
DATA_FILES = tuple(sorted(SHIPPED_DIR.glob("*.jsonl")))  # part of the evaluate stage's code hash

# lm-eval's default `target_delimiter`: what goes between the prompt and each choice's text.
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Question:
    """One multiple-choice example, with both what the model reads and what acc_norm measures.

    `texts` are kept apart from the continuations because lm-eval normalises by the length of the
    choice itself, not of the continuation (which carries the delimiter, or for WinoGrande is the
    shared rest of the sentence).
    """

    choices: tuple[tuple[str, str], ...]  # (context, continuation) per choice, as the model scores them
    texts: tuple[str, ...]  # each choice as lm-eval's doc_to_choice returns it; acc_norm divides by len()
    answer: int  # index of the right choice

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.choices):
            raise ValueError(f"{len(self.choices)} choices but {len(self.texts)} choice texts")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is not one of the {len(self.choices)} choices")
        if not all(self.texts):
            raise ValueError(f"empty choice text in {self.texts}: acc_norm would divide by zero")

    @classmethod
    def from_prompt(cls, context: str, texts: Iterable[str], answer: int) -> Question:
        """The common shape: one prompt, and each choice scored as the delimiter plus its text."""
        choice_texts = tuple(texts)
        return cls(tuple((context, TARGET_DELIMITER + t) for t in choice_texts), choice_texts, answer)


def _arc(row: dict) -> Question:
    return Question.from_prompt(f"Question: {row['question']}\nAnswer:", row["choices"], int(row["answer_index"]))


def _hellaswag_text(text: str) -> str:
    """Strip WikiHow's bracketed step markers the way lm-eval does, for the context and every ending."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> Question:
    context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return Question.from_prompt(context, (_hellaswag_text(e) for e in row["endings"]), int(row["label"]))


def _piqa(row: dict) -> Question:
    return Question.from_prompt(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


def _boolq(row: dict) -> Question:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return Question.from_prompt(context, ("no", "yes"), int(bool(row["answer"])))


def _winogrande(row: dict) -> Question:
    sentence = row["sentence"]
    blank = sentence.index("_")
    # lm-eval's choices are the sentence up to the blank with each option filled in.
    texts = tuple(sentence[:blank] + option for option in (row["option1"], row["option2"]))
    rest = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return Question(tuple((t, rest) for t in texts), texts, int(row["answer"]) - 1)


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    split: str  # the split lm-evaluation-harness reports
    parse: Callable[[dict], Question]
    metrics: tuple[str, ...]  # what lm-eval's task YAML reports; boolq and winogrande have no acc_norm


_WITH_NORM, _ACC_ONLY = ("acc", "acc_norm"), ("acc",)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("arc_easy", "arc_easy.jsonl", "test", _arc, _WITH_NORM),
        Benchmark("arc_challenge", "arc_challenge.jsonl", "test", _arc, _WITH_NORM),
        Benchmark("hellaswag", "hellaswag.jsonl", "validation", _hellaswag, _WITH_NORM),
        Benchmark("piqa", "piqa.jsonl", "validation", _piqa, _WITH_NORM),
        Benchmark("boolq", "boolq.jsonl", "validation", _boolq, _ACC_ONLY),
        Benchmark("winogrande", "winogrande.jsonl", "validation", _winogrande, _ACC_ONLY),
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
