"""What a stage function receives (`StageIO`) and returns (`StageStats`).

Operators know nothing about fingerprints, caching, stores or MLflow: the runner in
`pipelines/` hands a stage function its config section and a `StageIO`, and turns the returned
`StageStats` into the manifest and the MLflow child run. An operator reads its inputs by *role*
("documents", "tokenizer", "model"), never by the name of the stage that made them, so one
operator can serve several stages (both reward models, every RLHF round). Keeping the contract
here, not in `pipelines/`, lets operators run from tests or notebooks without the runner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class StageInputError(ValueError):
    """Input a stage cannot go on with (a missing file, an unreadable tokenizer, ...).

    Raise a subclass with a message naming the source/path and what to do; the CLI prints it as
    one line, without a traceback, and exits with code 2.
    """


class MissingInputError(StageInputError):
    """A role the stage reads was not wired to it, or its directory lacks what the stage needs."""


class Tracker(Protocol):
    """Where a stage's step metrics, params and artifacts go (the stage's MLflow child run under
    the runner). Implementations are plain picklable objects, so a training worker can log too."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def hand_back(self, timeout_s: float) -> Any:
        """What this tracker could not deliver within `timeout_s` (falsy: nothing), for the tracker
        of the same run in another process (a Ray Train worker's rank 0 hands back to the driver)."""

    def take_back(self, backlog: Any) -> None:
        """Deliver what another tracker of this run handed back."""


class NullTracker:
    """Drops everything: for operators called outside the runner."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def hand_back(self, timeout_s: float) -> None:
        return None

    def take_back(self, backlog: Any) -> None:
        pass


@dataclass(frozen=True)
class StageIO:
    """Where a stage reads and writes.

    `output_dir` is an empty temporary directory: everything written there is published
    atomically when the stage function returns, and nothing is published if it raises.
    `scratch_dir` survives a failed or killed attempt of the same fingerprint and is deleted
    after publishing: the place for state a re-run resumes from (Ray Train's run directory).
    `inputs` maps each role to the published output directory of the stage wired to it;
    `producers` names that stage, for messages only. `stage` and `fingerprint` identify this
    node of the DAG (e.g. to name a Ray Train run).
    """

    output_dir: Path
    inputs: Mapping[str, Path] = field(default_factory=dict)
    stage: str = "stage"
    fingerprint: str = "unfingerprinted"
    scratch_dir: Path | None = None
    producers: Mapping[str, str] = field(default_factory=dict)
    tracker: Tracker = field(default_factory=NullTracker)

    def input(self, role: str) -> Path:
        """The directory behind `role`; a clear error when the pipeline did not wire it."""
        if role not in self.inputs:
            wired = ", ".join(sorted(self.inputs)) or "none"
            raise MissingInputError(f"stage {self.stage} reads a {role!r} input, but its pipeline wires only: {wired}")
        return Path(self.inputs[role])

    def source_of(self, role: str) -> str:
        """'the <role> input (stage X)', for messages that tell the user what to run."""
        producer = self.producers.get(role)
        return f"the {role} input (stage {producer})" if producer else f"the {role} input"

    def input_manifest(self, role: str) -> dict[str, Any]:
        """The manifest of the output behind `role` (`{}` when it has none, e.g. in tests)."""
        path = self.input(role) / "manifest.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def scratch(self) -> Path:
        """`scratch_dir`, made if needed (outside the runner: a hidden folder beside the output)."""
        directory = self.scratch_dir or self.output_dir.parent / f".scratch-{self.output_dir.name}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory


@dataclass(frozen=True)
class InputRows:
    """Rows a stage read from the files under `prefix` of the input behind `role`.

    The runner compares them with the rows that input's manifest lists there, so a shard lost
    between the upstream's publish and this stage's read is caught instead of silently missing.
    """

    role: str
    prefix: str
    rows: int


@dataclass
class StageStats:
    """What a stage did, in one shape for every stage; the runner writes it into the manifest and MLflow.

    Counts are in `unit` (documents, sentences, tokens, dialogs, ...): `count_in` what the stage
    read, `count_out` what it wrote, `rejected` what it dropped, by reason, each counted on its
    own (rows of the rejects it wrote, items a task skipped), so that in == out + rejected is a
    real check. `planned` names reasons that are the stage's design rather than a loss (lines
    left out of a tokenizer sample, documents held out for validation): they do not count
    towards the "rejected too much" warning. `output_rows` maps a folder of the output
    (e.g. "documents/") to the rows its files must hold; the runner checks it against the files.
    `metrics` are stage-specific numbers for MLflow, `summary` extra manifest content, and
    `file_stats` per-file facts (relative path -> {"tokens": ...}) for the manifest's file list.
    """

    unit: str
    count_in: int
    count_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    planned: frozenset[str] = frozenset()
    inputs_read: tuple[InputRows, ...] = ()
    output_rows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    file_stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def count_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def counts(self) -> dict[str, int]:
        return {"in": self.count_in, "out": self.count_out, "rejected": self.count_rejected}
