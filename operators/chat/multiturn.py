"""Dialogs continued turn by turn by a policy through the rollout engine (Ghost Attention, its evaluation,
safety context distillation).

A long dialog is fitted to the context by keeping its first exchange, which carries the
instruction under test, and as many of its latest exchanges as fit; the middle ones go.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.chat_format import Message, encode_prompt
from model.tokenizer import Tokenizer
from operators.rollout.engine import Rollout, RolloutEngine, Sampling


def fit_keeping_first(tokenizer: Tokenizer, dialog: list[Message], context_tokens: int) -> list[Message]:
    """`dialog` (ending with a user turn) with middle exchanges dropped until its prompt fits `context_tokens`."""
    system = dialog[:1] if dialog[0]["role"] == "system" else []
    turns = dialog[len(system):]
    first, rest = turns[:2], turns[2:]
    while rest and len(encode_prompt(tokenizer, system + first + rest)) > context_tokens:
        rest = rest[2:]
    candidate = system + first + rest if rest else system + turns[-1:]
    if len(encode_prompt(tokenizer, candidate)) > context_tokens:
        candidate = system + turns[-1:]
    return candidate


def next_answers(engine: RolloutEngine, tokenizer: Tokenizer, dialogs: Sequence[list[Message]], sampling: Sampling,
                 seed: int, context_tokens: int) -> tuple[list[list[int]], list[Rollout]]:
    """(the prompt token ids, one sampled answer) for each dialog, which ends with the user's turn."""
    prompts = [encode_prompt(tokenizer, fit_keeping_first(tokenizer, d, context_tokens - sampling.max_new_tokens))
               for d in dialogs]
    answers = [samples[0] for samples in engine.rollouts(prompts, 1, sampling, seed)]
    return prompts, answers


def answer_text(tokenizer: Tokenizer, rollout: Rollout) -> str:
    return tokenizer.decode([t for t in rollout.response if t != tokenizer.eos_id]).strip() or "..."
