"""The chat pipeline's evaluation takes the evaluate stage's suite by name: its settings refuse an unknown
benchmark in one line, and the suite's metrics join the stage's as chat/eval/... and chat/table3/..."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from operators.chat.evaluate_chat import EvaluateChatConfig, flat_metrics


def test_an_unknown_benchmark_is_refused_by_name():
    assert EvaluateChatConfig(benchmarks=["table3"]).benchmarks == ["table3"]
    with pytest.raises(ValidationError, match="unknown benchmark 'bbh'"):
        EvaluateChatConfig(benchmarks=["gsm8k", "bbh"])


def test_the_suites_metrics_are_logged_beside_the_chat_metrics():
    results = {"truthfulqa": {"mc1": 0.5, "mc2": 0.4}, "win_rate": {"helpfulness": 0.5, "safety": None},
               "violation_rate": {"all": 0.1}, "toxic_rate": 0.0,
               "benchmarks": {"metrics": {"eval/gsm8k/exact_match": 0.25, "table3/math": 25.0}}}
    metrics = flat_metrics(results)
    assert metrics["chat/eval/gsm8k/exact_match"] == 0.25 and metrics["chat/table3/math"] == 25.0


def test_the_share_of_answers_that_ended_is_logged_per_side():
    results = {"truthfulqa": {"mc1": 0.5, "mc2": 0.4}, "win_rate": {"helpfulness": 0.5, "safety": None},
               "violation_rate": {"all": 0.1}, "toxic_rate": 0.0, "eos_rate": {"policy": 0.75, "reference": None}}
    metrics = flat_metrics(results)
    assert metrics["chat/eos_rate/policy"] == 0.75
    assert "chat/eos_rate/reference" not in metrics  # no reference answers: nothing to log
