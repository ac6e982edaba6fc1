"""What every stage store offers the runner, local directory or object store alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class MissingOutputError(FileNotFoundError):
    """An output the run needs is not finished in the store."""


class StageBusyError(RuntimeError):
    """Another process is producing the same stage output right now."""


@dataclass(frozen=True)
class WorkArea:
    """Where one attempt at a stage output is made.

    `output` is fresh for every attempt and becomes the published output; `scratch` is kept
    across attempts of the same fingerprint (a killed run resumes from what it left there) and
    deleted once the output is published. The area is locked while the attempt runs.
    """

    stage: str
    fingerprint: str
    output: Path
    scratch: Path
    lock_fd: int


class StageStore(Protocol):
    def uri(self, stage: str, fingerprint: str) -> str:
        """Where the output lives, as lineage records it."""

    def location(self, stage: str, fingerprint: str) -> str:
        """Where the output lives, as a user types it."""

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        """The finished output's manifest, or None: no manifest means not done."""

    def is_done(self, stage: str, fingerprint: str) -> bool: ...

    def finished_fingerprints(self, stage: str) -> list[str]:
        """Fingerprints of every finished output of `stage` (any config)."""

    def local_dir(self, stage: str, fingerprint: str) -> Path:
        """A finished output as a local directory a stage can read (fetched if needed)."""

    def local_copy(self, stage: str, fingerprint: str) -> Path | None:
        """The output's local directory if it is there now, without fetching anything."""

    def begin(self, stage: str, fingerprint: str) -> WorkArea:
        """Lock the work area of this output and hand out a fresh output dir and the scratch dir."""

    def publish(self, work: WorkArea, manifest: dict[str, Any]) -> Path:
        """Make `work.output` the finished output (manifest last); return its local directory."""

    def abandon(self, work: WorkArea) -> None:
        """Drop the attempt's output, keep its scratch, release the lock."""
