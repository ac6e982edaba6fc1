"""Every benchmark by name, and Llama 2's Table 3: which benchmarks each column averages, and the table itself.

    Code                   HumanEval, MBPP (pass@1)
    Commonsense Reasoning  PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OpenBookQA, CommonsenseQA
    World Knowledge        NaturalQuestions, TriviaQA (5-shot exact match)
    Reading Comprehension  SQuAD (exact match), BoolQ; the paper's third, QuAC, is not in this suite
    Math                   GSM8K (8-shot), MATH (4-shot)
    MMLU                   MMLU (5-shot)
    BBH, AGI Eval          not in this suite (no license-clean copy to ship, not among the issue's families)

A column is the plain mean of its benchmarks' scores (in %), each benchmark's score being its
`SCORE` metric: acc_norm where lm-eval reports one (the character-normalised choice), else acc; exact
match; pass@1. A column some of whose benchmarks did not run is marked with how many did.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

from operators.evaluate.benchmarks import BENCHMARKS, Benchmark
from operators.evaluate.generative_benchmarks import GENERATIVE

ALL: dict[str, Benchmark] = {**BENCHMARKS, **GENERATIVE}

GROUPS: dict[str, tuple[str, ...]] = {
    "Code": ("humaneval", "mbpp"),
    "Commonsense Reasoning": ("piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
                              "commonsense_qa"),
    "World Knowledge": ("nq_open", "triviaqa"),
    "Reading Comprehension": ("squad", "boolq"),
    "Math": ("gsm8k", "math"),
    "MMLU": ("mmlu",),
}
NOT_RUN = ("BBH", "AGI Eval")
TABLE3 = tuple(name for members in GROUPS.values() for name in members)
SELECTIONS = {"table3": TABLE3}  # names that stand for several benchmarks

LABELS = {"humaneval": "HumanEval", "mbpp": "MBPP", "piqa": "PIQA", "siqa": "SIQA", "hellaswag": "HellaSwag",
          "winogrande": "WinoGrande", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA",
          "commonsense_qa": "CSQA", "nq_open": "NQ", "triviaqa": "TQA", "squad": "SQuAD", "boolq": "BoolQ",
          "gsm8k": "GSM8K", "math": "MATH", "mmlu": "MMLU"}


def resolve(names: Iterable[str]) -> list[str]:
    """Benchmark names with `table3` expanded, each once, in the order given; unknown names raise ValueError."""
    resolved: list[str] = []
    for name in names:
        for member in SELECTIONS.get(name, (name,)):
            if member not in ALL:
                raise ValueError(f"unknown benchmark {member!r}; choose from {', '.join([*SELECTIONS, *ALL])}")
            if member not in resolved:
                resolved.append(member)
    return resolved


def score(name: str, result: Mapping[str, float]) -> float:
    """The benchmark's Table 3 number, in %."""
    metrics = ALL[name].metrics
    return 100 * float(result["acc_norm" if "acc_norm" in metrics else metrics[0]])


def group_scores(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per column: its mean over the benchmarks that ran (`score`), how many ran and how many it has."""
    columns = {}
    for column, members in GROUPS.items():
        ran = [score(name, results[name]) for name in members if name in results]
        if ran:
            columns[column] = {"score": statistics.fmean(ran), "ran": len(ran), "of": len(members)}
    return columns


def markdown(model: str, results: Mapping[str, Mapping[str, float]], skipped: Iterable[str]) -> str:
    """table3.md: the Table 3 row of this model, then each column's benchmarks."""
    columns, skipped = group_scores(results), sorted(skipped)
    header = ["Model", *GROUPS, *NOT_RUN]
    cells = [model]
    for column in GROUPS:
        value = columns.get(column)
        if value is None:
            cells.append("–")
        else:
            partial = "" if value["ran"] == value["of"] else f" ({value['ran']}/{value['of']})"
            cells.append(f"{value['score']:.1f}{partial}")
    cells += ["not run"] * len(NOT_RUN)
    lines = ["# Llama 2 Table 3 view", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| " + " | ".join(cells) + " |", "",
             "Each column is the mean of its benchmarks' scores below (%); (k/n): only k of its n benchmarks ran.",
             "", "| column | benchmark | metric | score | questions |", "|---|---|---|---|---|"]
    for column, members in GROUPS.items():
        for name in members:
            if name in results:
                metric = "acc_norm" if "acc_norm" in ALL[name].metrics else ALL[name].metrics[0]
                lines.append(f"| {column} | {LABELS[name]} | {metric} | {score(name, results[name]):.1f} | "
                             f"{int(results[name]['examples'])} |")
            else:
                lines.append(f"| {column} | {LABELS[name]} | – | {'skipped' if name in skipped else 'not run'} | 0 |")
    if skipped:
        lines += ["", f"Skipped (no data file): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"
