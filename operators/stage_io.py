"""What a stage function receives and returns.

Operators know nothing about fingerprints, caching or MLflow: the runner in `pipelines/`
hands a stage function its config section and a `StageIO`, and turns the returned
`StageResult` into the manifest and the MLflow child run. Keeping this contract here (and not
in `pipelines/`) lets operators be called from tests or notebooks without the runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageIO:
    """Where a stage reads and writes.

    `output_dir` is an empty temporary directory: everything written there is published
    atomically by the runner when the stage function returns, and nothing is published if it
    raises. `inputs` maps each upstream stage name to its published output directory.
    PNG files written to `plots_dir` are logged to the stage's MLflow run, not published.
    `tracking_uri` and `mlflow_run_id` name the stage's MLflow child run, for stages that log
    step metrics themselves (e.g. rank 0 of a training stage); None outside the runner.
    """

    output_dir: Path
    inputs: Mapping[str, Path]
    plots_dir: Path
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None


@dataclass
class StageResult:
    """Counts and facts the runner records in the manifest and in MLflow.

    `counts` always has "in", "out" and "rejected" (documents, unless the stage says
    otherwise in `summary["unit"]`), and in == out + rejected must hold. `metrics` are numbers
    logged to MLflow as metrics. `summary` is JSON-serialisable extra manifest content
    (e.g. per-source token counts, mixing weights, reject reasons). `file_stats` adds per-file
    facts (relative path -> {"tokens": ...}) to the manifest's file list.
    """

    counts: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    file_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


class StageInputError(ValueError):
    """Input a stage cannot go on with (a missing file, an unreadable tokenizer, ...).

    Raise a subclass with a message naming the source/path and what to do; the CLI prints it
    without a traceback.
    """
