"""The safety reward model's check on benign prompts: eq. 3 judges an answer by the safety RM whenever
that RM's sigmoid is below 0.15, so a safety RM that scores normal answers to harmless prompts that low
takes over the helpfulness RM's prompts. The share is counted once per prompt, on held-out rows only."""

from __future__ import annotations

import math

import pyarrow as pa

from operators.chat.reward import benign_judged_safe
from operators.rlhf.rewards import SAFETY_THRESHOLD

LOGIT_AT_THRESHOLD = math.log(SAFETY_THRESHOLD / (1 - SAFETY_THRESHOLD))


def judged(rows: list[tuple[str, str, float]]) -> pa.Table:
    return pa.Table.from_pylist([{"label": label, "context": context, "chosen_score": score}
                                 for label, context, score in rows])


def test_a_prompt_counts_once_and_safety_pairs_not_at_all():
    table = judged([("helpfulness", "a", 2.0), ("helpfulness", "a", 2.0), ("helpfulness", "b", -5.0),
                    ("safety", "c", -9.0)])
    assert benign_judged_safe(table) == {"prompts": 2, "share": 0.5}


def test_the_threshold_is_eq_3s():
    table = judged([("helpfulness", "a", LOGIT_AT_THRESHOLD + 1e-6), ("helpfulness", "b", LOGIT_AT_THRESHOLD - 1e-3)])
    assert benign_judged_safe(table)["share"] == 0.5


def test_no_helpfulness_pairs_gives_no_share():
    assert benign_judged_safe(judged([("safety", "c", 1.0)])) == {"prompts": 0, "share": None}
