"""Stage outputs in a local (or shared, POSIX) directory, published by atomic rename.

    <root>/<stage>/<fingerprint>/            a finished output: manifest.json written last
    <root>/<stage>/.work-<fingerprint>/      an attempt in progress, locked with flock:
        output-<random>/                     this attempt's output, renamed into place on publish
        scratch/                             kept across attempts (resume state), removed on publish

A crash at any point leaves either nothing, a hidden work area, or a directory without a
manifest: never an output that looks finished.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipelines.manifest import read_manifest, write_manifest
from pipelines.store.protocol import StageBusyError, WorkArea

_WORK_PREFIX = ".work-"
_STAGING_PREFIX = ".staging-"


class LocalStageStore:
    """Paths, locking and publication for stage outputs under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def output_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def uri(self, stage: str, fingerprint: str) -> str:
        return self.output_dir(stage, fingerprint).as_uri()

    def location(self, stage: str, fingerprint: str) -> str:
        return str(self.output_dir(stage, fingerprint))

    def local_dir(self, stage: str, fingerprint: str) -> Path:
        return self.output_dir(stage, fingerprint)

    def local_copy(self, stage: str, fingerprint: str) -> Path | None:
        directory = self.output_dir(stage, fingerprint)
        return directory if read_manifest(directory) is not None else None

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        return read_manifest(self.output_dir(stage, fingerprint))

    def is_done(self, stage: str, fingerprint: str) -> bool:
        return self.manifest(stage, fingerprint) is not None

    def finished_fingerprints(self, stage: str) -> list[str]:
        stage_dir = self.root / stage
        if not stage_dir.is_dir():
            return []
        return sorted(p.name for p in stage_dir.iterdir() if not p.name.startswith(".") and read_manifest(p))

    def begin(self, stage: str, fingerprint: str) -> WorkArea:
        area = self.root / stage / f"{_WORK_PREFIX}{fingerprint}"
        area.mkdir(parents=True, exist_ok=True)
        fd = os.open(area / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StageBusyError(
                f"another llama2 run is producing {stage} {fingerprint} right now (lock {area / 'lock'}); "
                "wait for it, or stop it"
            ) from None
        for stale in area.glob("output-*"):  # left by a crashed attempt: nobody else holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        output = area / f"output-{uuid.uuid4().hex[:8]}"
        output.mkdir()
        scratch = area / "scratch"
        scratch.mkdir(exist_ok=True)
        return WorkArea(stage, fingerprint, output, scratch, fd)

    def publish(self, work: WorkArea, manifest: dict[str, Any]) -> Path:
        final = self.install(work.stage, work.fingerprint, work.output, manifest)
        area = work.output.parent
        shutil.rmtree(area, ignore_errors=True)  # scratch included: the output it served is finished
        os.close(work.lock_fd)
        return final

    def abandon(self, work: WorkArea) -> None:
        shutil.rmtree(work.output, ignore_errors=True)
        os.close(work.lock_fd)

    def staging_dir(self, stage: str) -> Path:
        """A hidden directory to assemble an output in (e.g. one fetched from an object store)."""
        temp = self.root / stage / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        temp.mkdir(parents=True)
        return temp

    def install(self, stage: str, fingerprint: str, prepared: Path, manifest: dict[str, Any]) -> Path:
        """Move `prepared` into place (replacing an older copy), then write the manifest last."""
        final = self.output_dir(stage, fingerprint)
        if final.exists():
            # A forced re-run or a leftover from a crash between rename and manifest.
            graveyard = final.with_name(f"{_STAGING_PREFIX}old-{fingerprint}-{uuid.uuid4().hex[:8]}")
            os.replace(final, graveyard)
            shutil.rmtree(graveyard)
        os.replace(prepared, final)
        write_manifest(final, manifest)
        return final
