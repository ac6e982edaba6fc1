"""What every stage store offers the runner, local directory or object store alike."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class MissingOutputError(FileNotFoundError):
    """An output the run needs is not finished in the store."""


class StageBusyError(RuntimeError):
    """Another process is producing an output this run would produce or read, or reading one it would replace."""


@dataclass(frozen=True)
class Claim:
    """A run's hold on one output, taken before its first stage starts and kept to its end.

    Exclusive: the run may produce the output; no other run produces or reads it meanwhile.
    Shared: the run reads it; no other run replaces it meanwhile (readers share). So every
    manifest's `upstream` names the outputs that stage actually read. It is an flock, which
    the kernel releases when the process dies.
    """

    stage: str
    fingerprint: str
    exclusive: bool
    fd: int

    def release(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class WorkArea:
    """Where one attempt at a stage output is made.

    `output` is fresh for every attempt and becomes the published output; `scratch` is kept
    across attempts of the same fingerprint (a killed run resumes from what it left there) and
    deleted once the output is published. Only the holder of the output's exclusive claim has one.
    """

    stage: str
    fingerprint: str
    output: Path
    scratch: Path


class StageStore(Protocol):
    def uri(self, stage: str, fingerprint: str) -> str:
        """Where the output lives, as lineage records it."""

    def location(self, stage: str, fingerprint: str) -> str:
        """Where the output lives, as a user types it."""

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        """The finished output's manifest, or None: no manifest, an unreadable one, or a file that is
        missing or differs from it in size or modification time all mean not done (`problem` says why)."""

    def problem(self, stage: str, fingerprint: str) -> str | None:
        """Why an output that was published is no longer done, in one line naming the file; None when
        it is done or was never published."""

    def verify(self, stage: str, fingerprint: str) -> list[str] | None:
        """Every file of a published output against its manifest's sha256 (reads every byte): one line
        per problem, [] when all match, None when there is no output to verify."""

    def is_done(self, stage: str, fingerprint: str) -> bool: ...

    def finished_fingerprints(self, stage: str) -> list[str]:
        """Fingerprints of every finished output of `stage` (any config)."""

    def local_dir(self, stage: str, fingerprint: str) -> Path:
        """A finished output as a local directory a stage can read (fetched if needed)."""

    def local_copy(self, stage: str, fingerprint: str) -> Path | None:
        """The output's local directory if it is there now, without fetching anything."""

    def claim(self, stage: str, fingerprint: str, exclusive: bool) -> Claim:
        """Hold the output for this run (see `Claim`); `StageBusyError` at once when another run holds it."""

    def begin(self, claim: Claim) -> WorkArea:
        """A fresh output dir and the scratch dir for the output an exclusive `claim` holds."""

    def publish(self, work: WorkArea, manifest: dict[str, Any]) -> Path:
        """Make `work.output` the finished output (manifest last); return its local directory."""

    def abandon(self, work: WorkArea) -> None:
        """Drop the attempt's output, keep its scratch."""
