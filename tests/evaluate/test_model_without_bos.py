"""Scoring a model whose tokenizer has no BOS (SmolLM2's byte-level BPE): its contexts are the text alone."""

from __future__ import annotations

import math

import pytest

from operators.evaluate.benchmarks import Question
from operators.evaluate.loglik import encode_pair, question_results
from tests.evaluate.test_harness import VOCAB, Uniform, chars


def test_without_a_bos_the_context_is_the_text_alone():
    assert encode_pair(chars, None, "abc", "de") == (chars("abc"), chars("de"))
    assert encode_pair(chars, 1, "abc", "de") == ([1, *chars("abc")], chars("de"))


def test_questions_of_a_model_without_a_bos_are_scored():
    question = Question((("abc", "de"), ("abc", "xyz")), ("de", "xyz"), answer=0)
    [row] = question_results(Uniform(), [question], chars, bos_id=None, max_len=64)
    assert row["logliks"] == pytest.approx([-2 * math.log(VOCAB), -3 * math.log(VOCAB)])
    assert row["pick_acc"] == 0
