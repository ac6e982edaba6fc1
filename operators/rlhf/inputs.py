"""What a rejection-sampling or PPO round reads: the policy, both reward models with their score
statistics, and the prompts (token ids in the chat format, each flagged safety or not)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from model.chat_format import encode_prompt
from model.tokenizer import Tokenizer
from operators.formats.chat import dialog_of, model_dir, read_chat_table
from operators.rlhf.rewards import RewardStats
from operators.stage_io import MissingInputError, StageIO

REWARD_LABELS = ("helpfulness", "safety")  # the two reward models' roles (§3.2.2)


@dataclass(frozen=True)
class Prompt:
    id: str
    dialog: list[dict]  # ends with the user's turn
    tokens: list[int]  # encode_prompt(dialog): ends with [/INST]
    is_safety: bool
    category: str | None


def reward_models(io: StageIO) -> dict[str, Path]:
    """label -> the reward model's model/ folder (roles `helpfulness` and `safety`)."""
    return {label: model_dir(io, label) for label in REWARD_LABELS}


def reward_stats(io: StageIO) -> dict[str, RewardStats]:
    """label -> the mean and std of the reward model's scores, as its stage recorded them."""
    stats = {}
    for label in REWARD_LABELS:
        path = io.input(label) / "reward_stats.json"
        if not path.is_file():
            raise MissingInputError(f"no reward_stats.json in {io.input(label)}; run the stage that makes "
                                    f"{io.source_of(label)}")
        recorded = json.loads(path.read_text())
        stats[label] = RewardStats(recorded["mean"], recorded["std"])
    return stats


def read_prompts(io: StageIO, tokenizer: Tokenizer, split: str = "train", limit: int | None = None,
                 sources: list[str] | None = None) -> tuple[list[Prompt], int]:
    """(the prompts of `split` as chat-format token ids, how many prompt rows the table holds)."""
    table = read_chat_table(io, "data", "prompts")
    chosen = table.filter(pc.equal(table["split"], split))
    if sources is not None:
        chosen = chosen.filter(pc.is_in(chosen["source"], pa.array(sources)))
    rows = chosen.to_pylist()[:limit]
    prompts = [Prompt(r["id"], dialog_of(r["dialog"]), encode_prompt(tokenizer, dialog_of(r["dialog"])),
                      r["is_safety"], r["category"]) for r in rows]
    return prompts, table.num_rows
