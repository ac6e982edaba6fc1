"""Rejection sampling's work on the rollout actors: each chunk's samples scored with eq. 3-4, written
where they were generated as a shard of the stage's samples/, and only what the stage keeps sent back.

The K samples per prompt, with their token ids and text, are the bulk of the stage and grow with K
and the prompt count; the driver gets the shard's counts, and per prompt the K rewards
(Figure 7's curves) and the best ended answer (what rs_finetune trains on). The shards go to the
stage's output folder, which the actors must see: the local store on one machine, or a store every
node mounts (docs/cluster.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import torch

from model.tokenizer import Tokenizer, load_tokenizer
from operators.formats.documents import unit_shard_name, write_table
from operators.rlhf.inputs import Prompt
from operators.rlhf.rewards import RewardStats, combined_reward
from operators.rollout.engine import Rollout

SAMPLES_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False), pa.field("sample", pa.int32(), nullable=False),
    pa.field("response", pa.string(), nullable=False), pa.field("tokens", pa.list_(pa.int32()), nullable=False),
    pa.field("ended", pa.bool_(), nullable=False), pa.field("helpfulness", pa.float64(), nullable=False),
    pa.field("safety", pa.float64(), nullable=False), pa.field("reward", pa.float64()),
])


@dataclass(frozen=True)
class ChunkSummary:
    rows: int
    ended: int
    rewards: list[list[float | None]]  # per prompt of the chunk, per sample; None: cut by the length limit
    best: dict[str, dict]  # prompt id -> its best ended sample as a best.parquet row


@dataclass(frozen=True)
class SampleShardWriter:
    """The rejection sampling stage's `ChunkHandler` (operators/rollout/engine.py)."""

    directory: str  # the stage's samples/ folder
    tokenizer_dir: str  # the policy's model/ folder
    prompts: tuple[Prompt, ...]  # every prompt of the call, in order
    stats: dict[str, RewardStats]
    round: int

    def __call__(self, first_prompt: int, rollouts: list[list[Rollout]]) -> ChunkSummary:
        tokenizer = _tokenizer(self.tokenizer_dir)
        prompts = self.prompts[first_prompt:first_prompt + len(rollouts)]
        rewards = [_rewards(samples, prompt, self.stats) for samples, prompt in zip(rollouts, prompts)]
        rows = [{"prompt_id": p.id, "sample": i, "response": tokenizer.decode(s.response), "tokens": s.response,
                 "ended": s.ended, "helpfulness": s.scores["helpfulness"], "safety": s.scores["safety"], "reward": r}
                for p, samples, scores in zip(prompts, rollouts, rewards)
                for i, (s, r) in enumerate(zip(samples, scores))]
        path = Path(self.directory) / unit_shard_name(first_prompt, 0)
        write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), path)
        return ChunkSummary(len(rows), sum(row["ended"] for row in rows), rewards,
                            _best_of_round(prompts, rollouts, rewards, self.round, tokenizer))


@lru_cache(maxsize=4)
def _tokenizer(directory: str) -> Tokenizer:
    """Once per actor process, not once per chunk."""
    return load_tokenizer(directory)


def _rewards(samples: list[Rollout], prompt: Prompt, stats: dict[str, RewardStats]) -> list[float | None]:
    """The combined reward of each sample (None for one cut by the length limit)."""
    helpfulness = torch.tensor([s.scores["helpfulness"] for s in samples])
    safety = torch.tensor([s.scores["safety"] for s in samples])
    combined = combined_reward(helpfulness, safety, torch.tensor([prompt.is_safety] * len(samples)),
                               stats["helpfulness"], stats["safety"]).tolist()
    return [c if s.ended else None for c, s in zip(combined, samples)]


def _best_of_round(prompts: tuple[Prompt, ...], rollouts: list[list[Rollout]], rewards: list[list[float | None]],
                  round_number: int, tokenizer: Tokenizer) -> dict[str, dict]:
    """Per prompt with an ended sample: the highest-reward one, as a dialog and as the policy's token ids."""
    best = {}
    for prompt, samples, scores in zip(prompts, rollouts, rewards):
        candidates = [(score, sample) for score, sample in zip(scores, samples) if score is not None]
        if not candidates:
            continue
        score, sample = max(candidates, key=lambda c: c[0])
        answer = tokenizer.decode([t for t in sample.response if t != tokenizer.eos_id])
        best[prompt.id] = {"prompt_id": prompt.id, "round": round_number, "reward": score,
                           "dialog": json.dumps([*prompt.dialog, {"role": "assistant", "content": answer}]),
                           "token_ids": prompt.tokens + sample.response, "prompt_tokens": len(prompt.tokens)}
    return best
