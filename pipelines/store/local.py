"""Stage outputs in a local (or shared, POSIX) directory, published by atomic rename.

    <root>/<stage>/<fingerprint>/            a finished output: manifest.json written last
    <root>/<stage>/.lock-<fingerprint>       the output's claim (flock): exclusive while a run may
                                             produce it, shared while runs read it
    <root>/<stage>/.work-<fingerprint>/      an attempt in progress, by the exclusive claim's holder:
        output-<random>/                     this attempt's output, renamed into place on publish
        scratch/                             kept across attempts (resume state), removed on publish

A crash at any point leaves either nothing, a hidden work area, or a directory without a
manifest: never an output that looks finished. The lock file outlives the work area: a lock
on a file that is deleted and made again would not exclude anyone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipelines.manifest import (DamagedManifestError, changed_files, content_problems, one_line, read_manifest,
                                write_manifest)
from pipelines.store.protocol import Claim, StageBusyError, WorkArea

_WORK_PREFIX = ".work-"
_LOCK_PREFIX = ".lock-"
_STAGING_PREFIX = ".staging-"


class LocalStageStore:
    """Paths, claims and publication for stage outputs under one root directory."""

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
        return self.output_dir(stage, fingerprint) if self.manifest(stage, fingerprint) is not None else None

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        return self._inspect(stage, fingerprint)[0]

    def problem(self, stage: str, fingerprint: str) -> str | None:
        return self._inspect(stage, fingerprint)[1]

    def verify(self, stage: str, fingerprint: str) -> list[str] | None:
        directory = self.output_dir(stage, fingerprint)
        try:
            manifest = read_manifest(directory)
        except DamagedManifestError as err:
            return [str(err)]
        if manifest is None:
            return None
        return content_problems(manifest, str(directory), lambda rel: (directory / rel).open("rb"))

    def is_done(self, stage: str, fingerprint: str) -> bool:
        return self.manifest(stage, fingerprint) is not None

    def finished_fingerprints(self, stage: str) -> list[str]:
        stage_dir = self.root / stage
        if not stage_dir.is_dir():
            return []
        return sorted(p.name for p in stage_dir.iterdir() if not p.name.startswith(".") and self.is_done(stage, p.name))

    def claim(self, stage: str, fingerprint: str, exclusive: bool) -> Claim:
        path = self.root / stage / f"{_LOCK_PREFIX}{fingerprint}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            doing = "reading" if exclusive and _only_readers(path) else "producing"
            raise StageBusyError(
                f"another llama2 run is {doing} {stage} {fingerprint} right now (lock {path}), which this run would "
                f"{'make again' if exclusive else 'read'}; wait for that run to finish, or stop it"
            ) from None
        return Claim(stage, fingerprint, exclusive, fd)

    def begin(self, claim: Claim) -> WorkArea:
        area = self.root / claim.stage / f"{_WORK_PREFIX}{claim.fingerprint}"
        area.mkdir(parents=True, exist_ok=True)
        for stale in area.glob("output-*"):  # left by a crashed attempt: nobody else holds the claim
            shutil.rmtree(stale, ignore_errors=True)
        output = area / f"output-{uuid.uuid4().hex[:8]}"
        output.mkdir()
        scratch = area / "scratch"
        scratch.mkdir(exist_ok=True)
        return WorkArea(claim.stage, claim.fingerprint, output, scratch)

    def publish(self, work: WorkArea, manifest: dict[str, Any]) -> Path:
        final = self.install(work.stage, work.fingerprint, work.output, manifest)
        shutil.rmtree(work.output.parent, ignore_errors=True)  # scratch included: the output it served is finished
        return final

    def abandon(self, work: WorkArea) -> None:
        shutil.rmtree(work.output, ignore_errors=True)

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

    def _inspect(self, stage: str, fingerprint: str) -> tuple[dict[str, Any] | None, str | None]:
        """(manifest if the output is done, why a published output is not)."""
        directory = self.output_dir(stage, fingerprint)
        try:
            manifest = read_manifest(directory)
        except DamagedManifestError as err:
            return None, str(err)
        changed = changed_files(directory, manifest) if manifest is not None else []
        return (None, one_line(changed)) if changed else (manifest, None)


def _only_readers(path: Path) -> bool:
    """Whether the holders of the lock at `path` hold it shared (readers), not exclusive (a producer)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
