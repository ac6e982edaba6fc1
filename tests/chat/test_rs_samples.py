"""Rejection sampling's chunk handler, as a rollout actor runs it: the chunk's samples scored and written
as a shard, and only the per-prompt rewards and best answer handed back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from model.tokenizer import load_tokenizer
from operators.rlhf.inputs import Prompt
from operators.rlhf.rewards import RewardStats
from operators.rlhf.rs_samples import SAMPLES_SCHEMA, SampleShardWriter
from operators.rollout.engine import Rollout


def prompt(number: int, tokens: list[int]) -> Prompt:
    return Prompt(f"p{number}", [{"role": "user", "content": f"question {number}"}], tokens, is_safety=False,
                  category=None)


def sample(prompt_tokens: list[int], response: list[int], ended: bool, helpfulness: float) -> Rollout:
    return Rollout(prompt_tokens, response, [-1.0] * len(response), ended, {"helpfulness": helpfulness, "safety": 1.0})


def test_a_chunk_is_written_as_one_shard_and_only_rewards_and_the_best_answer_come_back(base_output, tmp_path: Path):
    model = base_output / "model"
    eos = load_tokenizer(model).eos_id
    prompts = tuple(prompt(n, [1, 10 + n]) for n in range(4))
    writer = SampleShardWriter(str(tmp_path / "samples"), str(model), prompts,
                               {"helpfulness": RewardStats(0.0, 1.0), "safety": RewardStats(0.0, 1.0)}, round=2)
    chunk = [  # prompts 2 and 3 of the call
        [sample(prompts[2].tokens, [7, eos], True, 0.5), sample(prompts[2].tokens, [8, 9], False, 3.0),
         sample(prompts[2].tokens, [9, eos], True, 1.5)],
        [sample(prompts[3].tokens, [7, 8], False, 2.0), sample(prompts[3].tokens, [8, 8], False, 1.0),
         sample(prompts[3].tokens, [9, 9], False, 0.0)],
    ]
    summary = writer(2, chunk)

    assert summary.rows == 6 and summary.ended == 2
    table = pq.read_table(tmp_path / "samples" / "u00002-00000.parquet")  # named by its first prompt: in order
    assert table.schema == SAMPLES_SCHEMA
    assert table.column("prompt_id").to_pylist() == ["p2"] * 3 + ["p3"] * 3
    assert [r is None for r in summary.rewards[1]] == [True] * 3  # cut by the length limit: no reward
    assert summary.rewards[0][1] is None and summary.rewards[0][2] > summary.rewards[0][0]
    assert list(summary.best) == ["p2"]  # p3 has no ended sample to keep
    best = summary.best["p2"]
    assert best["token_ids"] == prompts[2].tokens + [9, eos] and best["round"] == 2
    assert best["reward"] == summary.rewards[0][2]
    assert json.loads(best["dialog"])[-1]["role"] == "assistant"
