"""The artifact store: `<root>/<stage>/<fingerprint>/`, written by atomic publish.

A stage writes into a hidden temporary directory beside its final place; publishing renames it
into place and only then writes the manifest. A crash at any point leaves either nothing, a
hidden temp directory, or a directory without a manifest: never an output that looks finished.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipelines.manifest import read_manifest, write_manifest

_TMP_PREFIX = ".tmp-"


class StageStore:
    """Paths and publication for stage outputs under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def output_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

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
