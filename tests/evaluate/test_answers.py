"""Generated answers are extracted and compared as lm-evaluation-harness 0.4.13 does: every expected value
below is what the harness's own functions return for the same input (its regex filter, exact_match,
minerva_math's normalisation; SQuAD's official v1.1 script)."""

from __future__ import annotations

import pytest

from operators.evaluate.answers import (
    GSM8K_FLEXIBLE,
    GSM8K_STRICT,
    exact_match,
    gsm8k_answer,
    nq_answer,
    regex_extract,
    squad_scores,
    triviaqa_answer,
)
from operators.evaluate.generation import cut
from operators.evaluate.math_answer import final_answer, gold_answer, last_boxed, math_answer, normalize


@pytest.mark.parametrize("text, strict, flexible", [
    ("So 3 + 4 = 7. The answer is 1,250.\n\nQ:", "1,250", "1,250."),
    ("He pays $12 and then 5 more", "[invalid]", "5"),
    ("no numbers here", "[invalid]", "[invalid]"),
])
def test_gsm8k_takes_the_stated_answer_strictly_and_the_last_number_flexibly(text, strict, flexible):
    assert regex_extract(GSM8K_STRICT, text, 0) == strict
    assert regex_extract(GSM8K_FLEXIBLE, text, -1) == flexible


def test_gsm8k_compares_numbers_without_commas_dollars_or_a_final_period():
    answer = gsm8k_answer({"answer": "He works it out.\n#### 1250"}, "So the total is $1,250. The answer is $1,250.")
    assert answer.metrics == {"exact_match": 0.0, "exact_match_flexible": 1.0}  # strict wants a number after "is "
    right = gsm8k_answer({"answer": "#### 1250"}, "The answer is 1,250.")
    assert right.extracted == "1,250" and right.correct


def test_natural_questions_ignores_case_punctuation_and_articles_against_any_answer():
    assert nq_answer({"answer": ["Beatles", "the fab four"]}, " The Beatles").correct
    assert not nq_answer({"answer": ["Beatles"]}, " Rolling Stones").correct


def test_triviaqa_matches_any_alias_with_punctuation_removed_not_replaced():
    row = {"aliases": ["Campbell-Bannerman", "Henry Campbell Bannerman"]}
    assert triviaqa_answer(row, " Campbell-Bannerman!").correct
    assert not exact_match("Campbell-Bannerman!", ["campbell bannerman"], ignore_case=True, ignore_punctuation=True)


def test_squad_scores_are_the_official_exact_match_and_token_f1():
    assert squad_scores("The Eiffel Tower.", ["eiffel tower"])["exact_match"] == 1.0
    assert squad_scores("the big red Eiffel tower", ["Eiffel Tower"])["f1"] == pytest.approx(2 / 3)
    assert squad_scores("Paris", ["London", "paris"]) == {"exact_match": 1.0, "f1": 1.0}


@pytest.mark.parametrize("generation, normalised", [
    ("The final answer is $\\frac12$", "[invalidanswer]"),  # not Minerva's closing sentence
    ("Final Answer: The final answer is $10,000$ dollars. I hope it is correct.", "10000"),
    ("Final Answer: The final answer is $5 \\text{ cm}$. I hope it is correct.", "5"),
    ("Final Answer: The final answer is $x = \\sqrt2$. I hope it is correct.", "\\sqrt{2}"),
    ("Final Answer: The final answer is \\boxed{(1,2)}. I hope it is correct.", "(1,2)"),
    ("Final Answer: The final answer is $0,1$. I hope it is correct.", "0,1"),  # a tuple, not a thousand
])
def test_math_answers_are_normalised_as_minerva_does(generation, normalised):
    assert normalize(final_answer(generation)) == normalised


def test_math_gold_is_the_last_boxed_answer_of_the_solution():
    assert gold_answer("so the answer is $\\boxed{\\frac{2}{3}}$ and not \\boxed{5}.") == "5"
    assert last_boxed("x \\boxed 7$ y") == "\\boxed 7"
    row = {"solution": "Hence $\\boxed{\\frac{1}{2}}$."}
    assert math_answer(row, "Final Answer: The final answer is $\\frac12$. I hope it is correct.").correct


def test_a_generation_is_cut_before_its_first_stop_sequence():
    assert cut(" Paris, France.\nQ: next", ("\n", ".", ",")) == " Paris"
    assert cut("no stop here", ("\n",)) == "no stop here"
