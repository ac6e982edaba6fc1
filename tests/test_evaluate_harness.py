"""The zero-shot harness: log-likelihood scores with known answers, benchmark prompts, and honesty at chance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.args import get_config
from model.llama import Transformer
from operators.evaluate.benchmarks import BENCHMARKS, Question, read_questions
from operators.evaluate.loglik import continuation_logliks, encode_pair, score_questions
from operators.evaluate.stage import SHIPPED_BENCHMARKS

VOCAB = 256


def chars(text: str) -> list[int]:
    return [ord(c) % VOCAB for c in text]


class Counting(nn.Module):
    """A 'language model' that is sure the next token is the current one + 1 (abc -> d)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return 20.0 * nn.functional.one_hot((tokens + 1) % VOCAB, VOCAB).float() + self.anchor


class Uniform(Counting):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, VOCAB) + self.anchor


def test_a_model_that_knows_the_answers_scores_every_question_right():
    questions = [
        Question((("abc", "de"), ("abc", "xq"), ("abc", "dd")), answer=0),
        Question((("mno", "zz"), ("mno", "pqrs")), answer=1),
        Question((("ab", "cx"), ("ab", "cdefgh"), ("ab", "q")), answer=1),  # the longest, still right
    ]
    result = score_questions(Counting(), questions, chars, bos_id=1, max_len=64)
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)


def test_the_score_is_the_sum_of_continuation_log_probs():
    pairs = [encode_pair(chars, 1, "hello", " world"), encode_pair(chars, 1, "a", "bc")]
    uniform = continuation_logliks(Uniform(), pairs, max_len=64)
    assert uniform == pytest.approx([-6 * math.log(VOCAB), -2 * math.log(VOCAB)])
    counting = continuation_logliks(Counting(), [encode_pair(chars, 1, "a", "bc")], max_len=64)
    assert counting[0] == pytest.approx(0.0, abs=1e-6)  # both tokens certain


def test_a_long_input_keeps_its_continuation_and_the_end_of_its_context():
    pairs = [encode_pair(chars, 1, "x" * 100 + "abc", "de")]
    assert continuation_logliks(Counting(), pairs, max_len=8) == pytest.approx([0.0], abs=1e-6)


def test_length_normalisation_can_change_the_choice():
    # Uniform model: the raw sum prefers the shortest continuation, per-character scores tie -> first.
    q = Question((("ctx", " a longer answer"), ("ctx", " b")), answer=0)
    result = score_questions(Uniform(), [q], chars, bos_id=1, max_len=64)
    assert result["acc"] == 0.0 and result["acc_norm"] == 1.0


def test_winogrande_puts_each_option_in_the_blank_and_scores_the_shared_rest():
    row = {"sentence": "Sarah beat Maria so _ won the prize.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    q = BENCHMARKS["winogrande"].parse(row)
    assert q.choices == (("Sarah beat Maria so Sarah", " won the prize."), ("Sarah beat Maria so Maria", " won the prize."))
    assert q.answer == 0


def test_boolq_is_a_no_yes_question_after_the_passage():
    q = BENCHMARKS["boolq"].parse({"passage": "P.", "question": "is it", "answer": True})
    assert q.choices == (("P.\nQuestion: is it?\nAnswer:", " no"), ("P.\nQuestion: is it?\nAnswer:", " yes"))
    assert q.answer == 1


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_reads_from_the_shared_files(name, shared_data):
    questions = list(read_questions(BENCHMARKS[name], shared_data / "eval", limit=20))
    assert len(questions) == 20
    assert all(0 <= q.answer < len(q.choices) for q in questions)


def test_a_random_model_scores_at_chance():
    torch.manual_seed(0)
    model = Transformer(get_config("tiny").replace(max_seq_len=512))
    model.init_weights()
    questions = [q for name in ("arc_easy", "arc_challenge", "hellaswag", "boolq")
                 for q in read_questions(BENCHMARKS[name], SHIPPED_BENCHMARKS, limit=60)]
    result = score_questions(model, questions, chars, bos_id=1, max_len=512, batch_size=32)
    sigma = math.sqrt(result["chance"] * (1 - result["chance"]) / len(questions))
    assert abs(result["acc_norm"] - result["chance"]) < 4 * sigma
