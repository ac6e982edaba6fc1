"""`evaluate_chat`: every round's evaluation side by side (the paper's Figure 11 view and one table).

Reads `metrics.json` of the `evaluate_chat_*` outputs wired to it as roles `round_1`, `round_2`, ...
and `final`, and writes `comparison.md` (one column per round), `comparison.json`, a plot of the win
rates against the SFT model by round, and each metric per round as an MLflow series (step = round).
"""

from __future__ import annotations

import json

from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict

from operators.stage_io import MissingInputError, StageIO, StageStats


class CompareRoundsConfig(BaseModel):
    """Nothing to set: what is compared is what the pipeline wires in."""

    model_config = ConfigDict(extra="forbid")


def run_compare_rounds(config: CompareRoundsConfig, io: StageIO) -> StageStats:
    """The side-by-side table and Figure 11 (see module doc)."""
    roles = sorted((r for r in io.inputs if r.startswith("round_")), key=lambda r: int(r.split("_")[1]))
    roles += ["final"] if "final" in io.inputs else []
    columns = {role: _metrics(io, role) for role in roles}
    names = sorted({name for metrics in columns.values() for name in metrics})
    header = "| metric | " + " | ".join(role.replace("_", " ") for role in roles) + " |"
    lines = [header, "|" + " --- |" * (len(roles) + 1)]
    for name in names:
        cells = [f"{columns[role][name]:.3f}" if name in columns[role] else "-" for role in roles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (io.output_dir / "comparison.md").write_text(table)
    (io.output_dir / "comparison.json").write_text(json.dumps(columns, indent=2) + "\n")
    io.tracker.log_text(table, "comparison.md")
    for step, role in enumerate(roles, start=1):
        io.tracker.log_metrics({f"rounds/{name}": value for name, value in columns[role].items()}, step=step)
    io.tracker.log_figure(win_rate_figure(columns), "plots/win_rate_by_round.png")
    return StageStats(unit="evaluations", count_in=len(roles), count_out=len(roles), summary={"columns": columns})


def _metrics(io: StageIO, role: str) -> dict[str, float]:
    path = io.input(role) / "metrics.json"
    if not path.is_file():
        raise MissingInputError(f"no metrics.json in {io.input(role)}; run the stage that makes {io.source_of(role)}")
    return json.loads(path.read_text())


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
    ax.set_title("Llama 2-Chat rounds against the SFT model")
    ax.legend()
    return fig
