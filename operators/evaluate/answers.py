"""Scoring a generated answer as lm-evaluation-harness 0.4 does: extract, normalise, compare.

    exact_match   lm-eval's metric: each `regexes_to_ignore` removed, then lower-cased and punctuation
                  removed where the task says so, on both sides; right if it equals any gold answer
                  (TriviaQA: any alias; Natural Questions: any of the answers)
    squad         the official SQuAD v1.1 script's answer normalisation (lower case, no punctuation, no
                  articles, single spaces), exact match and token F1, best over the gold answers
    gsm8k         the chain-of-thought answer "The answer is N." (strict) and the last number in the
                  text (flexible), each compared with the number after "####" by exact_match
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

INVALID = "[invalid]"  # lm-eval's regex filter fallback


@dataclass(frozen=True)
class Answer:
    """What was taken from a generation, and how it scored: `metrics` holds the benchmark's metrics,
    the first of them what `correct` reports."""

    extracted: str
    gold: str | list[str]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return next(iter(self.metrics.values()), 0.0) == 1.0


def exact_match(prediction: str, golds: Sequence[str], ignore: Sequence[str] = (), ignore_case: bool = False,
                ignore_punctuation: bool = False) -> bool:
    """lm-eval's `exact_match` with its options; right if any gold matches."""
    def normal(text: str) -> str:
        for pattern in ignore:
            text = re.sub(pattern, "", text)
        if ignore_case:
            text = text.lower()
        if ignore_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        return text

    return normal(prediction) in {normal(gold) for gold in golds}


def _squad_normal(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """SQuAD v1.1's exact match and F1, best over the gold answers."""
    predicted = _squad_normal(prediction).split()
    best_em, best_f1 = 0.0, 0.0
    for gold in golds:
        expected = _squad_normal(gold).split()
        best_em = max(best_em, float(predicted == expected))
        common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
        elif not predicted and not expected:
            best_f1 = max(best_f1, 1.0)
    return {"exact_match": best_em, "f1": best_f1}


GSM8K_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")


def regex_extract(pattern: re.Pattern, text: str, group_select: int) -> str:
    """lm-eval's regex filter: the `group_select`-th match, its first non-empty group, stripped."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def gsm8k_answer(row: dict, generation: str) -> Answer:
    gold = row["answer"].split("####")[-1].strip()
    strict = regex_extract(GSM8K_STRICT, generation, 0)
    flexible = regex_extract(GSM8K_FLEXIBLE, generation, -1)
    same = {"ignore": GSM8K_IGNORE, "ignore_case": True}
    return Answer(strict, gold, {"exact_match": float(exact_match(strict, [gold], **same)),
                                 "exact_match_flexible": float(exact_match(flexible, [gold], **same))})


NQ_IGNORE = (r"\b(?:The |the |An |A |The |a |an )",)


def nq_answer(row: dict, generation: str) -> Answer:
    extracted = generation.strip()
    right = exact_match(extracted, row["answer"], NQ_IGNORE, ignore_case=True, ignore_punctuation=True)
    return Answer(extracted, list(row["answer"]), {"exact_match": float(right)})


def triviaqa_answer(row: dict, generation: str) -> Answer:
    extracted = generation.strip()
    right = exact_match(extracted, row["aliases"], ignore_case=True, ignore_punctuation=True)
    return Answer(extracted, list(row["aliases"]), {"exact_match": float(right)})


def squad_answer(row: dict, generation: str) -> Answer:
    golds = list(row["answers"]["text"])
    return Answer(generation.strip(), golds, squad_scores(generation, golds))
