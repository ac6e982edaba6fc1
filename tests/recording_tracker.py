"""A `Tracker` that keeps what a stage logs in memory, so tests read what it would send to MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from matplotlib.axes import Axes


@dataclass
class RecordingTracker:
    metrics: list[tuple[str, float, int | None]] = field(default_factory=list)  # (name, value, step)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # artifact file -> matplotlib Figure

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.extend((name, float(value), step) for name, value in metrics.items())

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.figures[artifact_file] = figure

    def hand_back(self, timeout_s: float) -> None:
        return None  # everything is kept here as it is logged

    def take_back(self, backlog: Any) -> None:
        pass

    def series(self, name: str) -> list[tuple[int | None, float]]:
        """(step, value) of every logged value of metric `name`, in logging order."""
        return [(step, value) for n, value, step in self.metrics if n == name]


def bars(ax: Axes, horizontal: bool = False) -> dict[str, float]:
    """Tick label -> length of the bar drawn at that tick, as the chart shows it."""
    axis = ax.yaxis if horizontal else ax.xaxis
    label_at = {round(float(loc), 6): label.get_text()
                for loc, label in zip(axis.get_majorticklocs(), axis.get_ticklabels())}
    lengths = {}
    for bar in ax.patches:
        centre = bar.get_y() + bar.get_height() / 2 if horizontal else bar.get_x() + bar.get_width() / 2
        lengths[label_at[round(centre, 6)]] = float(bar.get_width() if horizontal else bar.get_height())
    return lengths
