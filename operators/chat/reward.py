"""The reward-model stages `reward_helpfulness`, `reward_safety` and each round's `reward_*_v{k}`: one
operator, two config sections (§3.2.2), retrained every round on all preference batches so far (§3.2.1).

    model input: model/ (the SFT policy, or the previous round's reward model)        ┐
    batch_0, batch_j, ... batch_k inputs: preferences/ of the initial preferences and  ┴─> the training loop
        of every round j <= k that brought a batch (train, held-out)                      (FSDP2 on Ray Train)
        -> model/             the reward model, Hugging Face LlamaForSequenceClassification (num_labels 1)
           reward_stats.json  mean and standard deviation of its rewards (PPO whitens with them)
           eval.json          held-out accuracy overall and per rating level, per label (the paper's Table 8
                              view), and the target label's per batch (Table 7's view: each batch's own
                              held-out pairs, so the runs of successive rounds show accuracy as batches come in),
                              and the share of held-out benign prompts whose normal answer it scores safe

The training pairs are all train pairs of the target label plus a sample of the other label's,
as `mix` says (the paper's recipes: helpfulness + an equal part of safety; safety + helpfulness
at 90/10), each source weighted by `source_weights`; every batch counts as one more source.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.chat_template import llama2_chat_template
from model.convert import load_reward_model
from model.hf_format import write_tokenizer_files
from model.tokenizer import Tokenizer, load_tokenizer
from operators.chat.preferences import LEVELS
from operators.chat.reward_config import RewardConfig
from operators.chat.reward_task import (
    Pair,
    RewardTask,
    by_length,
    collate_pairs,
    pair_length,
    pair_scores,
    pairs_from_table,
)
from operators.formats.chat import model_dir, read_chat_table
from operators.rlhf.rewards import SAFETY_THRESHOLD
from operators.stage_io import InputRows, StageInputError, StageIO, StageStats
from operators.training.fit import fit

log = logging.getLogger(__name__)

__all__ = ["RewardConfig", "run_reward"]
EVAL_BATCH_PAIRS = 8
BATCH_ROLE = "batch_"  # batch_0: the initial preferences; batch_k: round k's batch


class RewardInputError(StageInputError):
    """The preference data has no train pairs for the reward model's target label."""


def run_reward(config: RewardConfig, io: StageIO) -> StageStats:
    """Train a reward model on the preferences of every `batch_*` input from the `model` input; publish it and its stats."""
    start = model_dir(io, "model")
    tokenizer = load_tokenizer(start)
    batches, table = read_batches(io)
    train_rows, selected, planned = training_mix(table, config)
    if not train_rows.num_rows:
        raise RewardInputError(f"no {config.target} train pairs in {', '.join(io.source_of(r) for r in batches)}")
    pairs = pairs_from_table(train_rows, tokenizer, config.margin)

    trained = fit(RewardTask(config, start, pairs, io.tracker, io.stage), io)
    write_tokenizer_files(trained.model_dir, tokenizer, llama2_chat_template(tokenizer))
    model = load_reward_model(trained.model_dir).eval()
    judged = held_out_judgements(model, table, tokenizer)
    results = {label: accuracy(judged.filter(pc.equal(judged["label"], label))) for label in ("helpfulness", "safety")}
    target = judged.filter(pc.equal(judged["label"], config.target))
    results["benign_judged_safe"] = benign_judged_safe(judged)
    results["by_batch"] = {role: {"stage": io.producers.get(role, role), **accuracy(target.filter(pc.equal(
        target["batch"], role)))} for role in batches}
    stats = reward_stats(model, pairs[: config.stats_max_pairs])
    (io.output_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (io.output_dir / "reward_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    metrics = _eval_metrics(results, config.target)
    io.tracker.log_metrics(metrics, len(trained.loss_history))
    for role, r in results["by_batch"].items():
        if r["pairs"]:  # Table 7's view as one series: accuracy on each batch's held-out pairs, by batch
            io.tracker.log_metrics({"eval/accuracy_by_batch": r["accuracy"]}, step=int(role.removeprefix(BATCH_ROLE)))
    log.info("%s: %d pairs, %d steps; held-out %s accuracy %s, per batch %s", io.stage, len(pairs),
             len(trained.loss_history), config.target, results[config.target]["accuracy"],
             {r["stage"]: r["accuracy"] for r in results["by_batch"].values()})
    return StageStats(
        unit="pairs",
        count_in=table.num_rows,
        count_out=selected,
        rejected=dict(planned),
        planned=frozenset(planned),
        inputs_read=tuple(InputRows(role, "preferences/", t.num_rows) for role, t in batches.items()),
        metrics={"train/first_loss": trained.loss_history[0], "train/final_loss": trained.loss_history[-1],
                 "train/steps": len(trained.loss_history), "train/pairs": len(pairs),
                 "reward/mean": stats["mean"], "reward/std": stats["std"], **metrics},
        summary={"eval": results, "reward_stats": stats, "final_checkpoint": trained.checkpoint},
    )


def read_batches(io: StageIO) -> tuple[dict[str, pa.Table], pa.Table]:
    """(role -> preferences of each `batch_*` input, the initial preferences first, then by round; all of
    them in one table with a `batch` column naming the role)."""
    roles = sorted((r for r in io.inputs if r.startswith(BATCH_ROLE)), key=lambda r: int(r.removeprefix(BATCH_ROLE)))
    if not roles:
        raise RewardInputError(f"stage {io.stage} has no preference batch wired (roles {BATCH_ROLE}0, {BATCH_ROLE}k)")
    batches = {role: read_chat_table(io, role, "preferences") for role in roles}
    return batches, pa.concat_tables([t.append_column("batch", pa.array([role] * t.num_rows, pa.string()))
                                      for role, t in batches.items()])


def _eval_metrics(results: dict, target: str) -> dict[str, float]:
    """eval/<label>/accuracy[/<level>], eval/accuracy[/<level>] for the target, eval/<batch role>/accuracy."""
    metrics = {f"eval/{label}/accuracy": results[label]["accuracy"] for label in ("helpfulness", "safety")
               if results[label]["pairs"]}
    metrics |= {f"eval/{label}/accuracy/{level}": acc for label in ("helpfulness", "safety")
                for level, acc in results[label]["by_level"].items()}
    if results[target]["pairs"]:
        metrics["eval/accuracy"] = results[target]["accuracy"]
        metrics |= {f"eval/accuracy/{level}": acc for level, acc in results[target]["by_level"].items()}
    metrics |= {f"eval/{role}/accuracy": r["accuracy"] for role, r in results["by_batch"].items() if r["pairs"]}
    if results["benign_judged_safe"]["share"] is not None:
        metrics["eval/benign_judged_safe"] = results["benign_judged_safe"]["share"]
    return metrics


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
def held_out_judgements(model: torch.nn.Module, table: pa.Table, tokenizer: Tokenizer) -> pa.Table:
    """The held-out rows with a `right` column: whether the chosen response scores higher."""
    rows = table.filter(pc.equal(table["split"], "heldout"))
    pairs = pairs_from_table(rows, tokenizer, "none")
    order = sorted(range(len(pairs)), key=lambda i: pair_length(pairs[i]))  # less padding
    right, chosen_score = [False] * len(pairs), [0.0] * len(pairs)
    for first in range(0, len(order), EVAL_BATCH_PAIRS):
        batch = order[first:first + EVAL_BATCH_PAIRS]
        chosen, rejected = pair_scores(model, collate_pairs([pairs[i] for i in batch]))
        for i, wins, score in zip(batch, (chosen > rejected).tolist(), chosen.tolist()):
            right[i], chosen_score[i] = wins, score
    return (rows.append_column("right", pa.array(right, pa.bool_()))
            .append_column("chosen_score", pa.array(chosen_score, pa.float64())))


def benign_judged_safe(judged: pa.Table) -> dict:
    """Of the held-out helpfulness prompts, the share whose normal (chosen) answer the model scores at
    or above eq. 3's safety threshold: where a safety RM scores a benign answer below it, eq. 3 judges
    that answer by the safety RM instead of the helpfulness RM, so this share should be near 1.
    One answer per prompt (a prompt's pairs share their chosen answer)."""
    helpful = judged.filter(pc.equal(judged["label"], "helpfulness"))
    by_prompt = dict(zip(helpful["context"].to_pylist(), helpful["chosen_score"].to_pylist()))
    safe = [1 / (1 + math.exp(-score)) >= SAFETY_THRESHOLD for score in by_prompt.values()]
    return {"prompts": len(safe), "share": sum(safe) / len(safe) if safe else None}


def accuracy(judged: pa.Table) -> dict:
    """Share of judged pairs where the chosen response scores higher, overall and per rating level."""
    right, ratings = judged["right"].to_pylist(), judged["rating"].to_pylist()
    by_level = {level: [r for r, rating in zip(right, ratings) if rating == level] for level in LEVELS}
    return {"pairs": len(right), "accuracy": sum(right) / len(right) if right else None,
            "by_level": {level: sum(v) / len(v) for level, v in by_level.items() if v},
            "pairs_by_level": {level: len(v) for level, v in by_level.items()}}


@torch.inference_mode()
def reward_stats(model: torch.nn.Module, pairs: list[Pair]) -> dict[str, float]:
    """Mean and standard deviation of the rewards of these pairs' responses."""
    scores: list[float] = []
    pairs = by_length(pairs)  # less padding; the order does not change a mean or a deviation
    for first in range(0, len(pairs), EVAL_BATCH_PAIRS):
        chosen, rejected = pair_scores(model, collate_pairs(pairs[first:first + EVAL_BATCH_PAIRS]))
        scores.extend(chosen.tolist() + rejected.tolist())
    values = np.asarray(scores)
    return {"mean": float(values.mean()), "std": float(values.std()), "count": len(values)}
