"""Log-likelihood scoring of continuations, the lm-evaluation-harness way.

    tokens = encode(context + continuation); the continuation is what follows encode(context)
    score  = sum of log p(continuation token | everything before it)
    acc       : argmax of score
    acc_norm  : argmax of score / len(continuation in characters)   (removes the bias to short answers)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from operators.evaluate.benchmarks import Question

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Scored:
    loglik: float
    tokens: int
    chars: int


def encode_pair(encode: Encode, bos_id: int, context: str, continuation: str) -> tuple[list[int], list[int]]:
    whole = encode(context + continuation)
    n_context = len(encode(context))
    return [bos_id] + whole[:n_context], whole[n_context:]


@torch.inference_mode()
def continuation_logliks(
    model: torch.nn.Module, pairs: Sequence[tuple[list[int], list[int]]], max_len: int, batch_size: int = 16
) -> list[float]:
    """Sum of continuation log-probs for each (context ids, continuation ids); long inputs keep their right end."""
    device = next(model.parameters()).device
    out: list[float] = []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first : first + batch_size]
        rows = [(ctx + cont)[-(max_len + 1) :] for ctx, cont in chunk]
        width = max(len(r) for r in rows) - 1
        inputs = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            inputs[i, : len(r) - 1] = torch.tensor(r[:-1])  # right padding: causal attention never sees it
        logprobs = F.log_softmax(model(inputs.to(device)).float(), dim=-1)
        for i, ((_, cont), r) in enumerate(zip(chunk, rows)):
            n = min(len(cont), len(r) - 1)
            if n == 0:
                out.append(0.0)
                continue
            positions = torch.arange(len(r) - 1 - n, len(r) - 1, device=device)
            targets = torch.tensor(r[-n:], device=device)
            out.append(logprobs[i, positions, targets].sum().item())
    return out


def score_questions(
    model: torch.nn.Module, questions: Sequence[Question], encode: Encode, bos_id: int, max_len: int, batch_size: int = 16
) -> dict[str, float]:
    """Accuracy (acc) and length-normalised accuracy (acc_norm) over `questions`, plus the chance level."""
    pairs, owners = [], []
    for q_index, q in enumerate(questions):
        for context, continuation in q.choices:
            pairs.append(encode_pair(encode, bos_id, context, continuation))
            owners.append((q_index, len(continuation)))
    logliks = continuation_logliks(model, pairs, max_len, batch_size)
    per_question: list[list[Scored]] = [[] for _ in questions]
    for (q_index, n_chars), ll, (_, cont) in zip(owners, logliks, pairs):
        per_question[q_index].append(Scored(ll, len(cont), n_chars))
    correct = correct_norm = 0
    for q, scored in zip(questions, per_question):
        correct += _argmax([s.loglik for s in scored]) == q.answer
        correct_norm += _argmax([s.loglik / max(1, s.chars) for s in scored]) == q.answer
    n = max(1, len(questions))
    return {
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "chance": sum(1 / len(q.choices) for q in questions) / n,
        "examples": len(questions),
    }


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
