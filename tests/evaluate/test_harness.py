"""The zero-shot harness: log-likelihoods with known answers, lm-eval's prompts and acc_norm, honesty at chance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from model.args import get_config
from model.llama import Transformer
from operators.evaluate.benchmarks import BENCHMARKS, SHIPPED_DIR, Question, read_questions
from operators.evaluate.loglik import (
    aggregate,
    continuation_logliks,
    encode_pair,
    judge,
    question_results,
    score_questions,
)

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
    """Every token has probability 1/VOCAB, so a continuation of n characters scores -n log VOCAB."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, VOCAB) + self.anchor


def undelimited(context: str, texts: list[str], answer: int) -> Question:
    """Choices that follow the context directly, so the Counting model can be certain of them."""
    return Question(tuple((context, t) for t in texts), tuple(texts), answer)


def test_a_model_that_knows_the_answers_scores_every_question_right():
    questions = [
        undelimited("abc", ["de", "xq", "dd"], answer=0),
        undelimited("mno", ["zz", "pqrs"], answer=1),
        undelimited("ab", ["cx", "cdefgh", "q"], answer=1),  # the longest, still right
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
    # Uniform model: the raw sum prefers the fewest tokens, the per-character score the longest text.
    q = Question.from_prompt("ctx", ["a longer answer", "b"], answer=0)
    result = score_questions(Uniform(), [q], chars, bos_id=1, max_len=64)
    assert result["acc"] == 0.0 and result["acc_norm"] == 1.0


def test_acc_norm_divides_by_the_choice_text_without_the_leading_space():
    # Per character of "ab" / "abcde": -3.0/2 = -1.5 < -6.6/5 = -1.32, so lm-eval picks "abcde".
    # Counting the space (" ab", " abcde") would give -3.0/3 = -1.0 > -6.6/6 = -1.1 and pick "ab".
    q = Question.from_prompt("Question: which?\nAnswer:", ["ab", "abcde"], answer=1)
    result = judge(0, q, [-3.0, -6.6])
    assert result["lengths"] == [2, 5]
    assert result["pick_acc"] == 0 and result["pick_acc_norm"] == 1


def test_each_question_keeps_its_log_likelihoods_lengths_and_both_picks():
    # Uniform model: " b" is 2 tokens, " a longer answer" 16, each costing log VOCAB.
    q = Question.from_prompt("ctx", ["b", "a longer answer"], answer=1)
    [result] = question_results(Uniform(), [q], chars, bos_id=1, max_len=64)
    assert result == {
        "index": 0,
        "prompt": "ctx",
        "gold": 1,
        "logliks": pytest.approx([-2 * math.log(VOCAB), -16 * math.log(VOCAB)]),
        "lengths": [1, 15],
        "pick_acc": 0,
        "pick_acc_norm": 1,
        "correct": False,
    }
    assert json.loads(json.dumps(result)) == result


def test_aggregates_are_the_means_of_per_question_correctness():
    # Uniform model: acc picks the shortest text, acc_norm the longest.
    questions = [
        Question.from_prompt("ctx", ["a", "bbb"], answer=0),  # acc right, acc_norm wrong
        Question.from_prompt("ctx", ["a", "bbb"], answer=1),  # acc wrong, acc_norm right
        Question.from_prompt("ctx", ["aa", "b", "cccc"], answer=1),  # acc right, acc_norm wrong
    ]
    results = question_results(Uniform(), questions, chars, bos_id=1, max_len=64)
    summary = aggregate(results)
    assert [r["index"] for r in results] == [0, 1, 2]
    assert summary["acc"] == sum(r["pick_acc"] == r["gold"] for r in results) / 3 == pytest.approx(2 / 3)
    assert summary["acc_norm"] == sum(r["pick_acc_norm"] == r["gold"] for r in results) / 3 == pytest.approx(1 / 3)
    assert summary["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert summary["examples"] == 3


def test_acc_norm_is_reported_only_for_the_tasks_lm_eval_reports_it_for():
    with_norm = {name for name, b in BENCHMARKS.items() if "acc_norm" in b.metrics}
    assert with_norm == {"arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa"}
    results = [judge(0, Question.from_prompt("P.", ["no", "yes"], answer=1), [-1.0, -2.0])]
    assert set(aggregate(results, BENCHMARKS["boolq"].metrics)) == {"acc", "chance", "examples"}


def test_a_question_refuses_an_answer_that_is_not_one_of_its_choices():
    with pytest.raises(ValueError, match="answer 2"):
        Question.from_prompt("ctx", ["a", "b"], answer=2)


def test_arc_asks_the_question_and_offers_each_choice_after_a_space():
    row = {"question": "What melts ice?", "choices": ["heat", "cold air"], "answer_index": 0}
    q, prompt = BENCHMARKS["arc_easy"].parse(row), "Question: What melts ice?\nAnswer:"
    assert q.choices == ((prompt, " heat"), (prompt, " cold air"))
    assert q.texts == ("heat", "cold air") and q.answer == 0


def test_hellaswag_drops_wikihow_markers_from_the_context_and_the_endings():
    row = {"activity_label": "Baking", "ctx_a": "Preheat the oven. [title] Mix flour.", "ctx_b": "then",
           "endings": ["add eggs [step] and milk.", "sing."], "label": "0"}
    q = BENCHMARKS["hellaswag"].parse(row)
    assert q.choices[0] == ("Baking: Preheat the oven.. Mix flour. Then", " add eggs and milk.")
    assert q.texts == ("add eggs and milk.", "sing.") and q.answer == 0


def test_piqa_offers_both_solutions_after_the_goal():
    row = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "bake the jar", "label": 0}
    q, prompt = BENCHMARKS["piqa"].parse(row), "Question: Open a jar\nAnswer:"
    assert q.choices == ((prompt, " twist the lid"), (prompt, " bake the jar"))
    assert q.texts == ("twist the lid", "bake the jar") and q.answer == 0


def test_winogrande_puts_each_option_in_the_blank_and_scores_the_shared_rest():
    row = {"sentence": "Sarah beat Maria so _ won the prize.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    q = BENCHMARKS["winogrande"].parse(row)
    assert q.choices == (("Sarah beat Maria so Sarah", " won the prize."), ("Sarah beat Maria so Maria", " won the prize."))
    assert q.texts == ("Sarah beat Maria so Sarah", "Sarah beat Maria so Maria")  # lm-eval's choices
    assert q.answer == 0


def test_boolq_is_a_no_yes_question_after_the_passage():
    q = BENCHMARKS["boolq"].parse({"passage": "P.", "question": "is it", "answer": True})
    assert q.choices == (("P.\nQuestion: is it?\nAnswer:", " no"), ("P.\nQuestion: is it?\nAnswer:", " yes"))
    assert q.texts == ("no", "yes") and q.answer == 1


# The first question of each shipped subset: its first choice's text and its answer, copied from the file.
FIRST_QUESTIONS = {
    "arc_easy": ("Sunlight is the source of energy for nearly all ecosystems.", 0),
    "arc_challenge": ("Planetary density will decrease.", 2),
    "hellaswag": ("is using wrap to wrap a pair of skis.", 3),
    "piqa": ("Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
             "you will also need to supply it with a water bottle and a food dish.", 0),
    "boolq": ("no", 0),
    "winogrande": ("Sarah was a much better surgeon than Maria so Sarah", 1),
}


@pytest.mark.parametrize("name", sorted(FIRST_QUESTIONS))
def test_every_benchmark_ships_the_first_100_questions_of_its_split(name):
    questions = list(read_questions(BENCHMARKS[name], SHIPPED_DIR))
    assert len(questions) == 100
    assert (questions[0].texts[0], questions[0].answer) == FIRST_QUESTIONS[name]


def test_a_random_model_scores_at_chance_where_choice_length_is_no_clue():
    # PIQA's two solutions and WinoGrande's two fillings have near-equal lengths. On ARC, HellaSwag
    # and BoolQ they do not, and a near-uniform model's acc / acc_norm follow the lengths: a random
    # model's score there measures the datasets' length artefacts, not the harness.
    torch.manual_seed(0)
    model = Transformer(get_config("tiny").replace(max_seq_len=512))
    model.init_weights()
    questions = [q for name in ("piqa", "winogrande") for q in read_questions(BENCHMARKS[name], SHIPPED_DIR)]
    result = score_questions(model, questions, chars, bos_id=1, max_len=512, batch_size=32)
    sigma = math.sqrt(result["chance"] * (1 - result["chance"]) / len(questions))
    assert abs(result["acc"] - result["chance"]) < 4 * sigma
    assert abs(result["acc_norm"] - result["chance"]) < 4 * sigma


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(FIRST_QUESTIONS))
def test_the_shipped_subset_is_the_start_of_the_full_benchmark(name, shared_data):
    full = read_questions(BENCHMARKS[name], shared_data / "eval", limit=100)
    assert list(full) == list(read_questions(BENCHMARKS[name], SHIPPED_DIR))
