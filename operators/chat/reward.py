"""The reward-model stages `reward_helpfulness` and `reward_safety`: one operator, two config sections (§3.2.2).

    model input: model/ (the SFT policy)          ┐
    data input:  preferences/ (train, held-out)    ┴─> the training loop (FSDP2 on Ray Train)
        -> model/             the reward model, Hugging Face LlamaForSequenceClassification (num_labels 1)
           reward_stats.json  mean and standard deviation of its rewards (PPO whitens with them)
           eval.json          held-out accuracy overall and per rating level, per label (the paper's Table 8 view)

The training pairs are all train pairs of the target label plus a sample of the other label's,
as `mix` says (the paper's recipes: helpfulness + an equal part of safety; safety + helpfulness
at 90/10), each source weighted by `source_weights`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.convert import load_reward_model
from model.hf_format import write_tokenizer_files
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.preferences import LEVELS
from operators.chat.reward_config import RewardConfig
from operators.chat.reward_task import Pair, RewardTask, collate_pairs, pair_scores, pairs_from_table
from operators.formats.chat import model_dir, read_chat_table
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats
from operators.training.fit import fit

log = logging.getLogger(__name__)

__all__ = ["RewardConfig", "run_reward"]
EVAL_BATCH_PAIRS = 8


class RewardInputError(StageInputError):
    """The preference data has no train pairs for the reward model's target label."""


def run_reward(config: RewardConfig, io: StageIO) -> StageStats:
    """Train a reward model on the `data` input's preferences from the `model` input; publish it and its stats."""
    sft = model_dir(io, "model")
    tokenizer = load_tokenizer(sft)
    table = read_chat_table(io, "data", "preferences")
    train_rows, selected, planned = training_mix(table, config)
    if not train_rows.num_rows:
        raise RewardInputError(f"no {config.target} train pairs in {io.source_of('data')}")
    pairs = pairs_from_table(train_rows, tokenizer, config.margin)

    trained = fit(RewardTask(config, sft, pairs, io.tracker, io.stage), io)
    write_tokenizer_files(trained.model_dir, tokenizer)
    model = load_reward_model(trained.model_dir).eval()
    results = {label: held_out_accuracy(model, table, label, tokenizer, config) for label in ("helpfulness", "safety")}
    stats = reward_stats(model, pairs[: config.stats_max_pairs])
    (io.output_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (io.output_dir / "reward_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    metrics = {f"eval/{label}/accuracy": r["accuracy"] for label, r in results.items() if r["pairs"]}
    metrics |= {f"eval/{label}/accuracy/{level}": acc for label, r in results.items()
                for level, acc in r["by_level"].items()}
    target = results[config.target]
    if target["pairs"]:
        metrics["eval/accuracy"] = target["accuracy"]
        metrics |= {f"eval/accuracy/{level}": acc for level, acc in target["by_level"].items()}
    io.tracker.log_metrics(metrics, len(trained.loss_history))
    log.info("%s: %d pairs, %d steps; held-out %s accuracy %s", io.stage, len(pairs), len(trained.loss_history),
             config.target, target.get("accuracy"))
    return StageStats(
        unit="pairs",
        count_in=table.num_rows,
        count_out=selected,
        rejected=dict(planned),
        planned=frozenset(planned),
        inputs_read=(InputRows("data", "preferences/", table.num_rows),),
        metrics={"train/first_loss": trained.loss_history[0], "train/final_loss": trained.loss_history[-1],
                 "train/steps": len(trained.loss_history), "train/pairs": len(pairs),
                 "reward/mean": stats["mean"], "reward/std": stats["std"], **metrics},
        summary={"eval": results, "reward_stats": stats, "final_checkpoint": trained.checkpoint},
    )


def training_mix(table: pa.Table, config: RewardConfig) -> tuple[pa.Table, int, Counter]:
    """(the training rows, how many distinct rows they draw on, planned rejects by reason).

    All train rows of the target label; of each other label in `mix`, a seeded sample without
    replacement of `ratio x target rows`; each source's rows repeated or subsampled by its weight.
    """
    rng = np.random.default_rng(config.seed)
    train = table.filter(pc.equal(table["split"], "train"))
    target = train.filter(pc.equal(train["label"], config.target))
    parts, planned = [target], Counter({"heldout": table.num_rows - train.num_rows})
    for label, ratio in sorted(config.mix.items()):
        others = train.filter(pc.equal(train["label"], label))
        take = min(others.num_rows, round(ratio * target.num_rows))
        parts.append(others.take(np.sort(rng.choice(others.num_rows, size=take, replace=False))))
    chosen = pa.concat_tables(parts)
    planned["not_in_mix"] = train.num_rows - chosen.num_rows
    weighted = [_weighted(chosen.filter(pc.equal(chosen["source"], source)), config.source_weights.get(source, 1.0), rng)
                for source in sorted(set(chosen["source"].to_pylist()))]
    rows = pa.concat_tables(weighted) if weighted else chosen
    planned["weight_below_one"] = chosen.num_rows - len(set(rows["id"].to_pylist()))
    return rows, chosen.num_rows - planned["weight_below_one"], +planned


def _weighted(rows: pa.Table, weight: float, rng: np.random.Generator) -> pa.Table:
    """`weight` copies of `rows`: whole copies, then a seeded sample for the fraction."""
    whole, fraction = int(weight), weight - int(weight)
    extra = rows.take(np.sort(rng.choice(rows.num_rows, size=round(fraction * rows.num_rows), replace=False)))
    return pa.concat_tables([rows] * whole + [extra])


@torch.inference_mode()
def held_out_accuracy(model: torch.nn.Module, table: pa.Table, label: str, tokenizer: Tokenizer,
                      config: RewardConfig) -> dict:
    """Share of held-out pairs of `label` where the chosen response scores higher, overall and per rating level."""
    rows = table.filter(pc.and_(pc.equal(table["split"], "heldout"), pc.equal(table["label"], label)))
    pairs = pairs_from_table(rows, tokenizer, "none")
    right: list[bool] = []
    for first in range(0, len(pairs), EVAL_BATCH_PAIRS):
        chosen, rejected = pair_scores(model, collate_pairs(pairs[first:first + EVAL_BATCH_PAIRS]))
        right.extend((chosen > rejected).tolist())
    by_level = {level: [r for r, p in zip(right, pairs) if p.rating == level] for level in LEVELS}
    return {"pairs": len(pairs), "accuracy": sum(right) / len(right) if right else None,
            "by_level": {level: sum(v) / len(v) for level, v in by_level.items() if v},
            "pairs_by_level": {level: len(v) for level, v in by_level.items()}}


@torch.inference_mode()
def reward_stats(model: torch.nn.Module, pairs: list[Pair]) -> dict[str, float]:
    """Mean and standard deviation of the rewards of these pairs' responses."""
    scores: list[float] = []
    for first in range(0, len(pairs), EVAL_BATCH_PAIRS):
        chosen, rejected = pair_scores(model, collate_pairs(pairs[first:first + EVAL_BATCH_PAIRS]))
        scores.extend(chosen.tolist() + rejected.tolist())
    values = np.asarray(scores)
    return {"mean": float(values.mean()), "std": float(values.std()), "count": len(values)}
