"""Log-likelihood scoring of multiple-choice questions, the lm-evaluation-harness way.

    tokens    = encode(context + continuation); the continuation is what follows encode(context)
    score     = sum of log p(continuation token | everything before it)
    acc       : argmax of score
    acc_norm  : argmax of score / len(choice text)   (removes the bias to short answers)

The acc_norm length is that of the choice as lm-eval's `doc_to_choice` gives it (`Question.texts`):
characters, without the space before it. Dividing by the continuation's length (space included)
picked a different answer on 6 of 200 demo-model questions. Ties go to the first choice, as with
numpy.argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypedDict

import torch
import torch.nn.functional as F

from operators.evaluate.benchmarks import Question

Encode = Callable[[str], list[int]]

# Which pick each reported metric checks against the gold answer.
PICKS: dict[str, Literal["pick_acc", "pick_acc_norm"]] = {"acc": "pick_acc", "acc_norm": "pick_acc_norm"}


class QuestionResult(TypedDict):
    """One question's scores, kept so that any aggregate can be checked or recomputed (one JSONL row)."""

    index: int  # position in the scored list; with read_questions, the row's position in its split
    prompt: str  # the (first) choice's context: the whole prompt, exemplars included
    gold: int  # index of the right choice
    logliks: list[float]  # per choice: sum of continuation log-probs
    lengths: list[int]  # per choice: characters of the choice text, the acc_norm divisor
    pick_acc: int
    pick_acc_norm: int
    correct: bool  # pick_acc is the gold answer


def encode_pair(encode: Encode, bos_id: int | None, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids); the context starts with the model's BOS where it has one (SmolLM2
    has none: its sequences start with the text)."""
    whole = encode(context + continuation)
    n_context = len(encode(context))
    prefix = [] if bos_id is None else [bos_id]
    return prefix + whole[:n_context], whole[n_context:]


@torch.inference_mode()
def continuation_logliks(
    model: torch.nn.Module, pairs: Sequence[tuple[list[int], list[int]]], max_len: int, batch_size: int = 16,
    batch_tokens: int = 4096,
) -> list[float]:
    """Sum of continuation log-probs for each (context ids, continuation ids); long inputs keep their right end.

    One forward per distinct input: choices that share a context and differ only in their last token
    (MMLU's and CommonsenseQA's letters) are read off the same logits, as lm-eval does. Inputs run
    longest first, at most `batch_size` rows and `batch_tokens` padded tokens per forward (the logits
    of a batch are rows x width x vocabulary floats).
    """
    device = next(model.parameters()).device
    rows = [(ctx + cont)[-(max_len + 1) :] for ctx, cont in pairs]
    readers: dict[tuple[int, ...], list[int]] = {}  # an input -> the pairs scored from its logits
    for k, row in enumerate(rows):
        readers.setdefault(tuple(row[:-1]), []).append(k)
    inputs = sorted(readers, key=len, reverse=True)
    out = [0.0] * len(pairs)
    first = 0
    while first < len(inputs):
        width = max(1, len(inputs[first]))
        count = max(1, min(batch_size, batch_tokens // width, len(inputs) - first))
        batch = inputs[first : first + count]
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for i, ids in enumerate(batch):
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)  # right padding: causal attention never sees it
        logits = model(tokens.to(device))
        for i, ids in enumerate(batch):
            for k in readers[ids]:
                n = min(len(pairs[k][1]), len(rows[k]) - 1)
                if n:
                    scores = F.log_softmax(logits[i, len(ids) - n : len(ids)].float(), dim=-1)
                    targets = torch.tensor(rows[k][-n:], device=device)
                    out[k] = scores.gather(-1, targets[:, None]).sum().item()
        first += count
    return out


def judge(index: int, question: Question, logliks: Sequence[float]) -> QuestionResult:
    """The picks by acc and acc_norm for one question whose choices scored `logliks`."""
    if len(logliks) != len(question.texts):
        raise ValueError(f"question {index} has {len(question.texts)} choices but {len(logliks)} log-likelihoods")
    lengths = [len(text) for text in question.texts]
    pick = _argmax(list(logliks))
    return {
        "index": index,
        "prompt": question.choices[0][0],
        "gold": question.answer,
        "logliks": [float(ll) for ll in logliks],
        "lengths": lengths,
        "pick_acc": pick,
        "pick_acc_norm": _argmax([ll / n for ll, n in zip(logliks, lengths)]),
        "correct": pick == question.answer,
    }


def question_results(
    model: torch.nn.Module, questions: Sequence[Question], encode: Encode, bos_id: int | None, max_len: int,
    batch_size: int = 16,
) -> list[QuestionResult]:
    """Every question's log-likelihoods and picks, in the order given (plain dicts, JSON-serialisable)."""
    pairs = [encode_pair(encode, bos_id, context, cont) for q in questions for context, cont in q.choices]
    logliks = iter(continuation_logliks(model, pairs, max_len, batch_size))
    return [judge(i, q, [next(logliks) for _ in q.choices]) for i, q in enumerate(questions)]


def aggregate(results: Sequence[QuestionResult], metrics: Sequence[str] = ("acc", "acc_norm")) -> dict[str, float]:
    """Each metric as the share of questions it picks right, plus the chance level and the count.

    `metrics` is what the benchmark reports (`Benchmark.metrics`); lm-eval reports no acc_norm for
    boolq or winogrande, so neither should we.
    """
    unknown = sorted(set(metrics) - set(PICKS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(PICKS)}")
    n = max(1, len(results))
    summary: dict[str, float] = {m: sum(r[PICKS[m]] == r["gold"] for r in results) / n for m in metrics}
    summary["chance"] = sum(1 / len(r["logliks"]) for r in results) / n
    summary["examples"] = len(results)
    return summary


def score_questions(
    model: torch.nn.Module, questions: Sequence[Question], encode: Encode, bos_id: int | None, max_len: int,
    batch_size: int = 16,
    metrics: Sequence[str] = ("acc", "acc_norm"),
) -> dict[str, float]:
    """`aggregate(question_results(...), metrics)`, for callers that keep no per-question rows."""
    return aggregate(question_results(model, questions, encode, bos_id, max_len, batch_size), metrics)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
