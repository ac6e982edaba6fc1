"""The `rejection_sampling_v{k}` stages: K samples per prompt from the round's policy, the best kept (§3.2.3).

    policy input: model/ (the round's starting policy)          ┐
    helpfulness, safety inputs: the reward models + their stats  ├─> rollout actors: K samples per prompt,
    data input: prompts/ (train split)                           │   scored with the combined reward
    previous input (round 2 on): the earlier rounds' best       ┘
        -> dialogs/   the best answer per prompt as a dialog, with the policy's exact token ids
                      (what rs_finetune_v{k} trains on, through the SFT operator)
           best.parquet    per prompt: the answer kept (this round's best; from keep_earlier_from_round on,
                           the best of this and every earlier round)
           best_so_far.parquet  per prompt: the best answer of this and every earlier round (the next round reads it)
           samples/        every sample with its scores, written by the rollout actors (rs_samples.py)
           curves.json     the paper's Figure 7: mean over prompts of the max and of the median reward among
                           the first N samples, N = 1 ... K; the samples' mean and standard deviation

The combined reward is eq. 3-4 (`operators/rlhf/rewards.py`). A sample cut by the length limit has
no reward read at an EOS and is never kept. Sampling is reproducible from `seed` and the round for
the same rollout chunking (`rollout.chunk_prompts`, `rollout.batch_size`).
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from model.tokenizer import load_tokenizer
from operators.formats.chat import DIALOGS_SCHEMA, model_dir
from operators.formats.damaged import decoding
from operators.formats.documents import publish_parts, write_table
from operators.rlhf.inputs import read_prompts, reward_models, reward_stats
from operators.rlhf.rs_config import RejectionSamplingConfig
from operators.rlhf.rs_samples import SAMPLES_SCHEMA, SampleShardWriter
from operators.rollout.engine import Sampling
from operators.rollout.factory import rollout_context, rollout_engine
from operators.stage_io import InputRows, StageIO, StageStats

log = logging.getLogger(__name__)

BEST_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False), pa.field("round", pa.int32(), nullable=False),
    pa.field("reward", pa.float64(), nullable=False), pa.field("dialog", pa.string(), nullable=False),
    pa.field("token_ids", pa.list_(pa.int32()), nullable=False), pa.field("prompt_tokens", pa.int32(), nullable=False),
])


def run_rejection_sampling(config: RejectionSamplingConfig, io: StageIO) -> StageStats:
    """Sample, score, keep the best per prompt (see module doc)."""
    policy = model_dir(io, "policy")
    tokenizer = load_tokenizer(policy)
    prompts, prompt_rows = read_prompts(io, tokenizer, "train", config.max_prompts)
    stats = reward_stats(io)
    engine = rollout_engine(config.rollout, policy,
                            rollout_context(policy, [p.tokens for p in prompts], config.max_new_tokens),
                            rewards=reward_models(io))
    writer = SampleShardWriter(str(io.output_dir / "samples"), str(policy), tuple(prompts), stats, config.round)
    try:
        sampling = Sampling(config.temperature, config.top_p, config.max_new_tokens)
        chunks = engine.map_rollouts([p.tokens for p in prompts], config.samples_per_prompt, sampling,
                                     seed=config.seed * 1000 + config.round, handle=writer)
    finally:
        engine.close()
    publish_parts(io.output_dir / "samples", SAMPLES_SCHEMA)

    rewards = [per_prompt for chunk in chunks for per_prompt in chunk.rewards]
    best = {pid: row for chunk in chunks for pid, row in chunk.best.items()}
    earlier = _earlier_best(io) if "previous" in io.inputs else {}
    best_so_far = {pid: max([row, earlier[pid]] if pid in earlier else [row], key=lambda b: b["reward"])
                   for pid, row in best.items()} | {pid: row for pid, row in earlier.items() if pid not in best}
    kept = best_so_far if config.round >= config.keep_earlier_from_round else best
    _write_outputs(io.output_dir, kept, best_so_far)
    curves = figure_7_curves(rewards)
    (io.output_dir / "curves.json").write_text(json.dumps(curves, indent=2) + "\n")
    for n, (best_n, median_n) in enumerate(zip(curves["max"], curves["median"]), start=1):
        io.tracker.log_metrics({"rs/max_reward": best_n, "rs/median_reward": median_n,
                                "rs/max_median_gap": best_n - median_n}, step=n)
    io.tracker.log_figure(curves_figure(curves, config.round), f"plots/rejection_sampling_v{config.round}.png")

    gain = kept_gain(best, curves)
    no_ended = sum(1 for p in prompts if p.id not in best)
    ended = sum(chunk.ended for chunk in chunks)
    log.info("%s: %d prompts x %d samples, %d ended with EOS; best-of-%d reward %.3f vs mean %.3f",
             io.stage, len(prompts), config.samples_per_prompt, ended, config.samples_per_prompt, curves["max"][-1],
             curves["mean"])
    return StageStats(
        unit="prompts",
        count_in=len(prompts),
        count_out=len(prompts) - no_ended,
        rejected={"no_sample_ended": no_ended} if no_ended else {},
        inputs_read=(InputRows("data", "prompts/", prompt_rows),),
        output_rows={"dialogs/": len(kept), "samples/": sum(chunk.rows for chunk in chunks)},
        metrics={"rs/best_of_k_reward": curves["max"][-1], "rs/mean_reward": curves["mean"],
                 "rs/eos_rate": ended / max(1, len(prompts) * config.samples_per_prompt),
                 "rs/kept_from_earlier_rounds": sum(1 for row in kept.values() if row["round"] != config.round)}
        | ({"rs/kept_gain_std": gain} if gain is not None else {}),
        summary={"curves": curves, "prompts_in_table": prompt_rows, "temperature": config.temperature,
                 "samples_per_prompt": config.samples_per_prompt},
    )


def _earlier_best(io: StageIO) -> dict[str, dict]:
    """The best answer per prompt over every earlier round (the previous round's best_so_far)."""
    path = io.input("previous") / "best_so_far.parquet"
    with decoding(path):
        table = pq.read_table(path)
    return {row["prompt_id"]: row for row in table.to_pylist()}


def _write_outputs(out: Path, kept: dict[str, dict], best_so_far: dict[str, dict]) -> None:
    rows = sorted(kept.values(), key=lambda r: r["prompt_id"])
    for name, table in (("best.parquet", rows), ("best_so_far.parquet", sorted(best_so_far.values(),
                                                                              key=lambda r: r["prompt_id"]))):
        write_table(pa.Table.from_pylist(table, schema=BEST_SCHEMA), out / name)
    dialogs = [{"id": r["prompt_id"], "source": f"rejection_sampling_v{r['round']}", "dialog": r["dialog"],
                "tokens": len(r["token_ids"]), "split": "train", "token_ids": r["token_ids"],
                "supervised_from": r["prompt_tokens"]} for r in rows]
    write_table(pa.Table.from_pylist(dialogs, schema=DIALOGS_SCHEMA), out / "dialogs" / "part-00000.parquet")


def figure_7_curves(rewards: list[list[float | None]]) -> dict:
    """Mean over prompts of the max and the median reward among the first N samples, N = 1 ... K (cut
    samples count as the lowest reward of the run)."""
    floor = min((r for per_prompt in rewards for r in per_prompt if r is not None), default=0.0)
    filled = [[floor if r is None else r for r in per_prompt] for per_prompt in rewards]
    k = max((len(p) for p in filled), default=0)
    best = [statistics.fmean(max(p[:n]) for p in filled) for n in range(1, k + 1)] if filled else []
    median = [statistics.fmean(statistics.median(p[:n]) for p in filled) for n in range(1, k + 1)] if filled else []
    everything = [r for p in filled for r in p]
    mean = statistics.fmean(everything) if everything else 0.0
    return {"max": best, "median": median, "mean": mean, "std": statistics.pstdev(everything) if everything else 0.0}


def kept_gain(best: dict[str, dict], curves: dict) -> float | None:
    """How far above the mean sample the kept answers' mean reward is, in standard deviations of the
    samples' rewards: what selecting the best of K buys (None when nothing is kept or all samples tie)."""
    if not best or curves["std"] == 0:
        return None
    return (statistics.fmean(row["reward"] for row in best.values()) - curves["mean"]) / curves["std"]


def curves_figure(curves: dict, round_number: int) -> Figure:
    """The paper's Figure 7: reward of the best and of the median sample as more samples are drawn."""
    fig = Figure(figsize=(6, 3.5), layout="tight")
    ax = fig.subplots()
    n = range(1, len(curves["max"]) + 1)
    ax.plot(n, curves["max"], label="max of N samples")
    ax.plot(n, curves["median"], label="median of N samples")
    ax.set_xlabel("N samples")
    ax.set_ylabel("reward (whitened)")
    ax.set_title(f"rejection sampling, round {round_number}")
    ax.legend()
    return fig


__all__ = ["RejectionSamplingConfig", "run_rejection_sampling"]
