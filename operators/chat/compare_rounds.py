"""`evaluate_chat`: every round's evaluation side by side, judged by one pair of reward models (the paper's
Figure 11 view and one table).

    round_1 ... round_K, final inputs: the `evaluate_chat_*` outputs (metrics.json, answers/ with token ids)
    helpfulness, safety inputs: the judges of the comparison (by default the last round's reward models)
        -> comparison.md (one column per round), comparison.json, a plot of the win rates against the SFT
           model by round, and each metric per round as an MLflow series (step = round)

Each round's own evaluation is judged by that round's reward models, which change as preference
batches come in; a win rate judged by one round's models and one judged by the next are not on one
scale. So the answers of every round (and of the reference) are judged again here by the one pair
wired in: win rates and violation rates come from those scores; TruthfulQA and the toxic rate, which
no reward model judges, come from each evaluation as it is.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from model.convert import load_reward_model, read_model_args
from operators.chat.judgement import TAG_JUDGES, violation_rates, win_rates
from operators.formats.chat import model_dir
from operators.formats.damaged import decoding
from operators.rlhf.inputs import REWARD_LABELS
from operators.rollout.scoring import reward_scores
from operators.stage_io import MissingInputError, StageIO, StageStats

JUDGED = ("chat/win_rate/", "chat/violation/")  # the metrics the comparison's judges decide


class CompareRoundsConfig(BaseModel):
    """Which reward models judge every round of the comparison."""

    model_config = ConfigDict(extra="forbid")

    judges_round: int | None = Field(None, ge=0, description="The round whose reward models judge every round "
                                     "(0: the reward models trained before the first round); None = the last round's.")
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass of a judge.")


def run_compare_rounds(config: CompareRoundsConfig, io: StageIO) -> StageStats:
    """The side-by-side table and Figure 11, every round judged by the same reward models (see module doc)."""
    roles = sorted((r for r in io.inputs if r.startswith("round_")), key=lambda r: int(r.split("_")[1]))
    roles += ["final"] if "final" in io.inputs else []
    answers = {role: _answers(io, role) for role in roles}
    scores = _judge(io, [row for rows in answers.values() for row in rows], config.batch_size)
    columns = {role: _metrics(io, role, answers[role], scores) for role in roles}
    judges = {label: {"stage": io.producers.get(label, label), "fingerprint": io.input(label).name}
              for label in REWARD_LABELS}
    names = sorted({name for metrics in columns.values() for name in metrics})
    header = "| metric | " + " | ".join(role.replace("_", " ") for role in roles) + " |"
    lines = [header, "|" + " --- |" * (len(roles) + 1)]
    for name in names:
        cells = [f"{columns[role][name]:.3f}" if name in columns[role] else "-" for role in roles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    note = ", ".join(f"{label}: {j['stage']} ({j['fingerprint']})" for label, j in judges.items())
    table = "\n".join(lines) + f"\n\nWin and violation rates of every column judged by {note}.\n"
    (io.output_dir / "comparison.md").write_text(table)
    (io.output_dir / "comparison.json").write_text(json.dumps({"judges": judges, "columns": columns}, indent=2) + "\n")
    io.tracker.log_text(table, "comparison.md")
    io.tracker.set_tags({TAG_JUDGES: note})
    for step, role in enumerate(roles, start=1):
        io.tracker.log_metrics({f"rounds/{name}": value for name, value in columns[role].items()}, step=step)
    io.tracker.log_figure(win_rate_figure(columns), "plots/win_rate_by_round.png")
    return StageStats(unit="evaluations", count_in=len(roles), count_out=len(roles),
                      summary={"columns": columns, "judges": judges})


def _answers(io: StageIO, role: str) -> list[dict]:
    path = io.input(role) / "answers"
    if not path.is_dir():
        raise MissingInputError(f"no answers/ in {io.input(role)}; run the stage that makes {io.source_of(role)}")
    with decoding(path):
        return pq.read_table(path).to_pylist()


@torch.inference_mode()
def _judge(io: StageIO, rows: list[dict], batch_size: int) -> dict[str, dict[tuple[int, ...], float]]:
    """label -> the judge's score of each distinct answer (prompt and response token ids)."""
    sequences = list(dict.fromkeys(tuple(r["prompt_tokens"] + r["response_tokens"]) for r in rows))
    longest = max(map(len, sequences), default=1)
    scores = {}
    for label in REWARD_LABELS:
        judge = model_dir(io, label)
        model = load_reward_model(judge, max_seq_len=max(read_model_args(judge).max_seq_len, longest)).eval()
        values = [v for first in range(0, len(sequences), batch_size)
                  for v in reward_scores(model, sequences[first:first + batch_size])]
        scores[label] = dict(zip(sequences, values))
    return scores


def _metrics(io: StageIO, role: str, rows: list[dict], scores: dict[str, dict[tuple[int, ...], float]]) -> dict[str, float]:
    """The evaluation's metrics, its win and violation rates replaced by the comparison's judges'."""
    path = io.input(role) / "metrics.json"
    if not path.is_file():
        raise MissingInputError(f"no metrics.json in {io.input(role)}; run the stage that makes {io.source_of(role)}")
    metrics = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith(JUDGED)}
    judged = {side: [{label: scores[label][tuple(r["prompt_tokens"] + r["response_tokens"])] for label in REWARD_LABELS}
                     for r in rows if r["side"] == side] for side in ("policy", "reference")}
    mine = [r for r in rows if r["side"] == "policy"]
    rates = win_rates([r["is_safety"] for r in mine], judged["policy"], judged["reference"])
    metrics |= {f"chat/win_rate/{judge}": rate for judge, rate in rates.items() if rate is not None}
    safety = [(r["category"], s["safety"]) for r, s in zip(mine, judged["policy"]) if r["is_safety"]]
    if safety:
        metrics |= {f"chat/violation/{c}": v for c, v in violation_rates(*zip(*safety)).items()}
    return metrics


def win_rate_figure(columns: dict[str, dict[str, float]]) -> Figure:
    """Win rate against the SFT model by round, helpfulness and safety (the paper's Figure 11 view)."""
    fig = Figure(figsize=(6, 3.5), layout="tight")
    ax = fig.subplots()
    labels = list(columns)
    for judge in ("helpfulness", "safety"):
        values = [columns[role].get(f"chat/win_rate/{judge}") for role in labels]
        ax.plot(labels, [v if v is not None else float("nan") for v in values], marker="o", label=f"{judge} (RM judge)")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate against SFT")
    ax.set_title("Llama 2-Chat rounds against the SFT model (one pair of judges)")
    ax.legend()
    return fig
