"""Benchmarks as lm-evaluation-harness 0.4 poses them: the prompt of each question, and for multiple choice
its (context, continuation) choices.

A benchmark reads one JSONL file (the dataset's own fields plus `split`) and poses the questions of
its `split` in file order: the prompt is lm-eval's `description`, the few-shot exemplars (each its
`doc_to_text`, the target delimiter, its answer and the few-shot delimiter) and the question's own
`doc_to_text`. Multiple-choice questions become a `Question`, one (context, continuation) pair per
choice, the model's answer being the choice whose continuation it finds most likely. Most tasks share
the context and vary the continuation; WinoGrande does the opposite ("partial evaluation": each option
fills the blank, and the shared rest of the sentence is scored). The generative benchmarks
(`generative_benchmarks.py`) use the same prompts and add stop sequences and answer scoring.

Exemplars come from the split lm-eval draws them from (`FewShot.split`: MMLU's dev split, the train
split, exemplars written into the task). Where a file lacks that split (the offline copies of
CommonsenseQA, Natural Questions and TriviaQA have no train split) they come from `fallback`, the
evaluated split, with the question itself left out, which is lm-eval's own rule for that case.

`SHIPPED_DIR` holds small attributed subsets (licenses in its PROVENANCE.md); full files are read from
any folder with the same file names (`evaluate.benchmark_dir`, `llama2 evaluate --benchmark-dir`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from operators.evaluate.fewshot import HARNESS_SEED, Sampler, draw

if TYPE_CHECKING:
    from operators.evaluate.answers import Answer

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


@dataclass(frozen=True)
class FewShot:
    """Where a benchmark's exemplars come from and how they are joined (lm-eval's `fewshot_config`)."""

    shots: int
    split: str | None  # the split lm-eval draws from; None: `fixed`
    sampler: Sampler = "random"
    fallback: str | None = None  # drawn from here, the question left out, where the file lacks `split`
    fixed: tuple[dict, ...] = ()  # exemplars written into lm-eval's task (GSM8K and MATH chain of thought)
    delimiter: str = "\n\n"  # after each exemplar (lm-eval's fewshot_delimiter)


@dataclass(frozen=True)
class Generation:
    """How a generative benchmark's answer is produced and judged (lm-eval's generation_kwargs and metrics)."""

    until: tuple[str, ...]  # the answer ends before the first of these (the model's EOS ends it too)
    max_gen_toks: int = 256  # lm-eval's default
    score: Callable[[dict, str], Answer] | None = None  # (row, generated text) -> extracted answer and metrics
    program: Callable[[dict, str], str] | None = None  # code: the program that passes or fails in the sandbox


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    split: str  # the split lm-evaluation-harness reports
    kind: Literal["choice", "generate"]
    metrics: tuple[str, ...]  # what lm-eval's task reports, the first one the headline
    text: Callable[[dict], str]  # lm-eval's doc_to_text
    target: Callable[[dict], str]  # an exemplar's answer as the prompt shows it
    fewshot: FewShot | None = None
    description: Callable[[dict], str] | None = None  # text before the exemplars
    subject: str | None = None  # field splitting the benchmark (MMLU subjects): limits, exemplars, scores per subject
    target_delimiter: str = TARGET_DELIMITER
    question: Callable[[dict, str], Question] | None = None  # choice: (row, prompt) -> Question
    generation: Generation | None = None  # generate: stop sequences, length, scoring

    def parse(self, row: dict) -> Question:
        """The zero-shot multiple-choice question of one row (its own prompt, no exemplars)."""
        if self.question is None:
            raise ValueError(f"{self.name} is not a multiple-choice benchmark")
        return self.question(row, self.text(row))


@dataclass(frozen=True)
class Posed:
    """One question as the model gets it: its row, its position in the split and its whole prompt."""

    index: int
    row: dict
    prompt: str


def pose(benchmark: Benchmark, directory: Path, limit: int | None = None, seed: int = HARNESS_SEED) -> list[Posed]:
    """The first `limit` questions of the benchmark's split (per subject where it has subjects), prompted."""
    rows = [json.loads(line) for line in (Path(directory) / benchmark.file).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    docs = [(i, row) for i, row in enumerate(r for r in rows if r.get("split", benchmark.split) == benchmark.split)]
    groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for index, row in docs:
        groups[row[benchmark.subject] if benchmark.subject else ""].append((index, row))
    posed = []
    for subject, members in sorted(groups.items()) if benchmark.subject else groups.items():
        members = members[:limit]
        exemplars = _exemplars(benchmark, rows, [row for _, row in members], subject, seed)
        for (index, row), shots in zip(members, exemplars):
            posed.append(Posed(index, row, _prompt(benchmark, row, shots)))
    return posed


def read_questions(benchmark: Benchmark, directory: Path, limit: int | None = None,
                   seed: int = HARNESS_SEED) -> Iterator[Question]:
    """The multiple-choice questions of `pose`, in its order."""
    if benchmark.question is None:
        raise ValueError(f"{benchmark.name} is not a multiple-choice benchmark")
    for posed in pose(benchmark, directory, limit, seed):
        yield benchmark.question(posed.row, posed.prompt)


def _exemplars(benchmark: Benchmark, rows: list[dict], docs: list[dict], subject: str, seed: int) -> list[list[dict]]:
    few = benchmark.fewshot
    if few is None or few.shots == 0:
        return [[] for _ in docs]
    if few.split is None:
        return draw(few.fixed, docs, few.shots, few.sampler, seed, exclude_self=False)
    split = few.split if any(r.get("split") == few.split for r in rows) else few.fallback
    if split is None:
        raise ValueError(f"{benchmark.file} has no {few.split!r} rows for {benchmark.name}'s {few.shots}-shot exemplars")
    pool = [r for r in rows if r.get("split") == split and (not subject or r[benchmark.subject] == subject)]
    return draw(pool, docs, few.shots, few.sampler, seed, exclude_self=split == benchmark.split)


def _prompt(benchmark: Benchmark, row: dict, exemplars: list[dict]) -> str:
    few = benchmark.fewshot
    shown = "".join(benchmark.text(e) + benchmark.target_delimiter + benchmark.target(e) + few.delimiter
                    for e in exemplars) if few else ""
    description = benchmark.description(row) if benchmark.description else ""
    return description + shown + benchmark.text(row)


# Multiple choice: each benchmark's doc_to_text, doc_to_choice and gold index.

def choice_benchmark(name: str, file: str, split: str, text: Callable[[dict], str],
                     choices: Callable[[dict], list[str]], gold: Callable[[dict], int],
                     metrics: tuple[str, ...], **options) -> Benchmark:
    """A benchmark whose question is the prompt followed by each choice; an exemplar shows its right choice."""
    def question(row: dict, prompt: str) -> Question:
        return Question.from_prompt(prompt, choices(row), gold(row))

    return Benchmark(name, file, split, "choice", metrics, text, lambda row: choices(row)[gold(row)],
                     question=question, **options)


def _hellaswag_text(text: str) -> str:
    """Strip WikiHow's bracketed step markers the way lm-eval does, for the context and every ending."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _winogrande(row: dict, prompt: str) -> Question:
    sentence = row["sentence"]
    blank = sentence.index("_")
    # lm-eval's choices are the sentence up to the blank with each option filled in.
    texts = tuple(prompt[: len(prompt) - len(sentence)] + sentence[:blank] + option
                  for option in (row["option1"], row["option2"]))
    rest = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return Question(tuple((t, rest) for t in texts), texts, int(row["answer"]) - 1)


def _lettered(question: str, options: list[str]) -> str:
    return question + "".join(f"\n{letter}. {option}" for letter, option in zip("ABCDE", options)) + "\nAnswer:"


def _mmlu_description(row: dict) -> str:
    return f"The following are multiple choice questions (with answers) about {row['subject'].replace('_', ' ')}.\n\n"


_WITH_NORM, _ACC_ONLY = ("acc", "acc_norm"), ("acc",)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        choice_benchmark("arc_easy", "arc_easy.jsonl", "test", lambda r: f"Question: {r['question']}\nAnswer:",
                         lambda r: r["choices"], lambda r: int(r["answer_index"]), _WITH_NORM),
        choice_benchmark("arc_challenge", "arc_challenge.jsonl", "test", lambda r: f"Question: {r['question']}\nAnswer:",
                         lambda r: r["choices"], lambda r: int(r["answer_index"]), _WITH_NORM),
        choice_benchmark("hellaswag", "hellaswag.jsonl", "validation",
                         lambda r: _hellaswag_text(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"),
                         lambda r: [_hellaswag_text(e) for e in r["endings"]], lambda r: int(r["label"]), _WITH_NORM),
        choice_benchmark("piqa", "piqa.jsonl", "validation", lambda r: f"Question: {r['goal']}\nAnswer:",
                         lambda r: [r["sol1"], r["sol2"]], lambda r: int(r["label"]), _WITH_NORM),
        choice_benchmark("siqa", "siqa.jsonl", "validation", lambda r: f"Q: {r['context']} {r['question']}\nA:",
                         lambda r: [r["answerA"], r["answerB"], r["answerC"]], lambda r: int(r["label"]) - 1, _ACC_ONLY),
        choice_benchmark("openbookqa", "openbookqa.jsonl", "test", lambda r: r["question_stem"],
                         lambda r: r["choices"], lambda r: r["labels"].index(r["answerKey"].lstrip()), _WITH_NORM),
        choice_benchmark("boolq", "boolq.jsonl", "validation",
                         lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
                         lambda r: ["no", "yes"], lambda r: int(bool(r["answer"])), _ACC_ONLY),
        Benchmark("winogrande", "winogrande.jsonl", "validation", "choice", _ACC_ONLY, lambda r: r["sentence"],
                  lambda r: "", question=_winogrande),
        choice_benchmark("commonsense_qa", "commonsense_qa.jsonl", "validation",
                         lambda r: _lettered(f"Question: {r['question'].strip()}", r["choices"]["text"]),
                         lambda r: list("ABCDE"), lambda r: "ABCDE".index(r["answerKey"]), _ACC_ONLY,
                         fewshot=FewShot(7, "train", fallback="validation")),  # Llama 2 Table 3: 7-shot
        choice_benchmark("mmlu", "mmlu.jsonl", "test", lambda r: _lettered(r["question"].strip(), r["choices"]),
                         lambda r: list("ABCD"), lambda r: int(r["answer"]), _ACC_ONLY,
                         fewshot=FewShot(5, "dev", sampler="first_n"), description=_mmlu_description, subject="subject"),
    )
}
