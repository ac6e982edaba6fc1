"""`gatt_evaluate`: does a policy keep following an instruction given once, over turns 1 ... 20 (Llama 2 §3.3)?

For each instruction a program can check (the answer's language, emojis only, a word limit, upper
case, a forbidden word) and each of `dialogs_per_kind` dialogs, the instruction is given in the
first user turn only; the user then asks the held-out prompts of the chat data one per turn and
the policy answers. Adherence at turn t is the share of dialogs whose answer at turn t follows
the instruction. Both policies, before (the `before` input) and after Ghost Attention (`after`),
answer the same dialogs with the same seeds: the paper's Figure 28 view, logged per turn and plotted.
"""

from __future__ import annotations

import json
import logging
import random
import statistics

import pyarrow.compute as pc
from matplotlib.figure import Figure
from pydantic import Field

from model.chat_format import Message
from model.convert import read_model_args
from model.tokenizer import load_tokenizer
from operators.chat.gatt_instructions import CHECKABLE, Instruction, adheres, instruction
from operators.chat.multiturn import answer_text, next_answers
from operators.formats.chat import dialog_of, model_dir, read_chat_table
from operators.rollout.config import SamplingStageConfig
from operators.rollout.engine import Sampling
from operators.rollout.factory import rollout_engine
from operators.stage_io import InputRows, StageIO, StageStats

log = logging.getLogger(__name__)


class GattEvaluateConfig(SamplingStageConfig):
    """How adherence over turns is measured."""

    turns: int = Field(20, ge=1, description="Turns per dialog (the paper's Figure 28: 20).")  # §3.3
    dialogs_per_kind: int = Field(8, ge=1, description="Dialogs per checkable instruction kind.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")
    max_new_tokens: int = Field(64, ge=1, description="Longest answer per turn.")
    seed: int = Field(0, description="Seeds the instructions, the user turns and the sampling.")


def run_gatt_evaluate(config: GattEvaluateConfig, io: StageIO) -> StageStats:
    """Adherence per turn of the `before` and `after` policies (see module doc)."""
    table = read_chat_table(io, "data", "prompts")
    held_out = table.filter(pc.equal(table["split"], "heldout"))
    questions = [dialog_of(d)[-1]["content"] for d in (held_out if held_out.num_rows else table)["dialog"].to_pylist()]
    rng = random.Random(config.seed)
    cases = [(instruction(kind, rng), [rng.choice(questions) for _ in range(config.turns)])
             for kind in CHECKABLE for _ in range(config.dialogs_per_kind)]
    curves = {side: _adherence(model_dir(io, side), cases, config) for side in ("before", "after")}
    per_kind = {side: {kind: statistics.fmean(v for (rule, _), row in zip(cases, rows) if rule.kind == kind for v in row)
                       for kind in CHECKABLE} for side, rows in curves.items()}
    by_turn = {side: [statistics.fmean(row[t] for row in rows) for t in range(config.turns)]
               for side, rows in curves.items()}
    results = {"by_turn": by_turn, "by_kind": per_kind, "dialogs": len(cases), "turns": config.turns}
    (io.output_dir / "adherence.json").write_text(json.dumps(results, indent=2) + "\n")
    for t in range(config.turns):
        io.tracker.log_metrics({f"gatt/{side}/adherence": by_turn[side][t] for side in by_turn}, step=t + 1)
    io.tracker.log_figure(adherence_figure(by_turn), "plots/gatt_adherence.png")
    overall = {side: statistics.fmean(values) for side, values in by_turn.items()}
    log.info("%s: adherence over %d turns: before %.3f, after %.3f", io.stage, config.turns, overall["before"],
             overall["after"])
    return StageStats(
        unit="answers", count_in=2 * len(cases) * config.turns, count_out=2 * len(cases) * config.turns,
        inputs_read=(InputRows("data", "prompts/", table.num_rows),),
        metrics={f"gatt/{side}/adherence_mean": value for side, value in overall.items()}
        | {f"gatt/{side}/{kind}": value for side, kinds in per_kind.items() for kind, value in kinds.items()},
        summary=results,
    )


def _adherence(policy, cases: list[tuple[Instruction, list[str]]], config: GattEvaluateConfig) -> list[list[bool]]:
    """For each case, whether the policy's answer at each turn follows the case's instruction."""
    tokenizer = load_tokenizer(policy)
    context = read_model_args(policy).max_seq_len
    engine = rollout_engine(config.rollout, policy, context)
    sampling = Sampling(config.temperature, 1.0, config.max_new_tokens)
    dialogs: list[list[Message]] = [[] for _ in cases]
    followed: list[list[bool]] = [[] for _ in cases]
    try:
        for turn in range(config.turns):
            for dialog, (rule, questions) in zip(dialogs, cases):
                text = f"{rule.text} {questions[turn]}" if turn == 0 else questions[turn]
                dialog.append({"role": "user", "content": text})
            _, answers = next_answers(engine, tokenizer, dialogs, sampling, config.seed * 1013 + turn, context)
            for dialog, verdicts, (rule, _), rollout in zip(dialogs, followed, cases, answers):
                text = answer_text(tokenizer, rollout)
                dialog.append({"role": "assistant", "content": text})
                verdicts.append(adheres(text, rule))
    finally:
        engine.close()
    return followed


def adherence_figure(by_turn: dict[str, list[float]]) -> Figure:
    """Share of answers following the instruction at each turn, before and after Ghost Attention."""
    fig = Figure(figsize=(6, 3.5), layout="tight")
    ax = fig.subplots()
    for side, values in by_turn.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{side} GAtt")
    ax.set_xlabel("dialog turn")
    ax.set_ylabel("answers following the instruction")
    ax.set_ylim(0, 1)
    ax.set_title("Ghost Attention: instruction adherence over turns")
    ax.legend()
    return fig
