"""The artifact store: `<root>/<stage>/<fingerprint>/`, written by atomic publish.

A stage writes into a hidden temporary directory beside its final place; publishing renames it
into place and only then writes the manifest. A crash at any point leaves either nothing, a
hidden temp directory, or a directory without a manifest: never an output that looks finished.

`open_store` picks this local store or, for an object-store URI, `ObjectStageStore`
(pipelines/object_store.py), which publishes the same layout through pyarrow's filesystems.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from infra.settings import RuntimeSettings, remote_store, store_root
from pipelines.manifest import read_manifest, write_manifest

_TMP_PREFIX = ".tmp-"


class StageStore:
    """Paths and publication for stage outputs under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def output_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def uri(self, stage: str, fingerprint: str) -> str:
        """Where the output lives, as lineage records it."""
        return self.output_dir(stage, fingerprint).as_uri()

    def location(self, stage: str, fingerprint: str) -> str:
        """Where the output lives, as a user types it."""
        return str(self.output_dir(stage, fingerprint))

    def local_dir(self, stage: str, fingerprint: str) -> Path:
        """A finished output as a local directory a stage can read."""
        return self.output_dir(stage, fingerprint)

    def local_copy(self, stage: str, fingerprint: str) -> Path | None:
        """The output's local directory if it is there now, without fetching anything."""
        directory = self.output_dir(stage, fingerprint)
        return directory if read_manifest(directory) is not None else None

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        return read_manifest(self.output_dir(stage, fingerprint))

    def is_done(self, stage: str, fingerprint: str) -> bool:
        return self.manifest(stage, fingerprint) is not None

    def finished_fingerprints(self, stage: str) -> list[str]:
        """Fingerprints of every finished output of `stage` (any config)."""
        stage_dir = self.root / stage
        if not stage_dir.is_dir():
            return []
        return sorted(p.name for p in stage_dir.iterdir() if not p.name.startswith(".") and read_manifest(p))

    def new_temp_dir(self, stage: str, fingerprint: str) -> Path:
        temp = self.root / stage / f"{_TMP_PREFIX}{fingerprint}-{uuid.uuid4().hex[:8]}"
        temp.mkdir(parents=True)
        return temp

    def publish(self, stage: str, fingerprint: str, temp: Path, manifest: dict[str, Any]) -> Path:
        """Move `temp` into place (replacing an older copy), then write the manifest last."""
        final = self.output_dir(stage, fingerprint)
        if final.exists():
            # A forced re-run or a leftover from a crash between rename and manifest.
            graveyard = final.with_name(f"{_TMP_PREFIX}old-{fingerprint}-{uuid.uuid4().hex[:8]}")
            os.replace(final, graveyard)
            shutil.rmtree(graveyard)
        os.replace(temp, final)
        write_manifest(final, manifest)
        return final

    @staticmethod
    def discard(temp: Path) -> None:
        shutil.rmtree(temp, ignore_errors=True)


def open_store(settings: RuntimeSettings) -> StageStore:
    """The stage store `runtime.store` names: a local directory, or an object store with a local working copy."""
    remote = remote_store(settings)
    if remote is None:
        return StageStore(store_root(settings))
    from pipelines.object_store import ObjectStageStore

    return ObjectStageStore(remote, StageStore(store_root(settings)))
