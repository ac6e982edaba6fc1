"""Generator(prefix_cache=True): a dialog continued in the same row is prefilled with its new tokens
only, and generates what a generator without the cache generates."""

from __future__ import annotations

import torch

from model.args import CONFIGS
from model.generate import Generator
from model.llama import Transformer

FIRST = [[1, 17, 33, 9, 70, 5, 12], [1, 40, 2, 8]]


def _model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CONFIGS["tiny"].replace(max_seq_len=256)).eval()
    model.init_weights(std=0.2)
    return model


def _prefill_lengths(model: Transformer) -> list[int]:
    """Positions fed by every pass through ``model`` from now on (the first of a call is its prefill)."""
    seen: list[int] = []
    model.tok_embeddings.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    return seen


def _continued(first: list[list[int]], answers: list[list[int]], turn: list[int]) -> list[list[int]]:
    return [p + a + turn for p, a in zip(first, answers)]


def test_a_continued_dialog_is_prefilled_from_where_its_row_diverges_and_answers_the_same():
    model = _model()
    cached, fresh = Generator(model, prefix_cache=True), Generator(_model())
    answers = cached.generate(FIRST, 10, temperature=0.0, eos_id=None)
    second = _continued(FIRST, answers, [3, 4, 5])
    fed = _prefill_lengths(model)
    assert cached.generate(second, 10, temperature=0.0, eos_id=None) == fresh.generate(second, 10, temperature=0.0,
                                                                                     eos_id=None)
    longest = max(len(p) for p in second)
    # The new turns, and each answer's last token (written, never fed back as the answer ended there).
    assert fed[0] == longest - (min(len(p) + len(a) for p, a in zip(FIRST, answers)) - 1)


def test_a_dialog_that_outgrows_the_cache_keeps_its_prefix_in_the_longer_one():
    model = _model()
    cached, fresh = Generator(model, prefix_cache=True), Generator(_model())
    answers = cached.generate(FIRST, 8, temperature=0.0, eos_id=None)
    second = _continued(FIRST, answers, list(range(20, 120)))  # past the 64-position buffer of the first call
    fed = _prefill_lengths(model)
    assert cached.generate(second, 8, temperature=0.0, eos_id=None) == fresh.generate(second, 8, temperature=0.0,
                                                                                    eos_id=None)
    assert fed[0] < max(len(p) for p in second) - 10


def test_rows_that_changed_are_prefilled_from_their_first_new_token():
    model = _model()
    cached, fresh = Generator(model, prefix_cache=True), Generator(_model())
    cached.generate(FIRST, 6, temperature=0.0, eos_id=None)
    other = [[1, 17, 33, 99, 98, 97, 96, 95], [1, 40, 2, 8, 6]]  # row 0 differs from its 4th token
    fed = _prefill_lengths(model)
    assert cached.generate(other, 6, temperature=0.0, eos_id=None) == fresh.generate(other, 6, temperature=0.0,
                                                                                   eos_id=None)
    assert fed[0] == max(len(p) for p in other) - 3


def test_without_the_option_every_call_prefills_the_whole_prompt():
    model = _model()
    plain = Generator(model)
    answers = plain.generate(FIRST, 10, temperature=0.0, eos_id=None)
    second = _continued(FIRST, answers, [3, 4, 5])
    fed = _prefill_lengths(model)
    plain.generate(second, 10, temperature=0.0, eos_id=None)
    assert fed[0] == max(len(p) for p in second)
