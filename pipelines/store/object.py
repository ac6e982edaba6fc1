"""Stage outputs in an object store (S3, GCS, HDFS, ... through pyarrow's filesystems).

Object stores have no atomic rename, so "done" is carried by the manifest alone: publishing
deletes any old manifest first, uploads every file of the stage's output, and writes
`manifest.json` last. A crash part-way leaves objects without a manifest, which no reader takes
for a finished output and the next run replaces.

Stages read and write local files (memory-mapped Arrow shards, sentencepiece's trainer), so
each run works in a local working copy (`runtime.local_cache`, a `LocalStageStore`): a stage's
work area is there and its output is uploaded on publish; an upstream output is fetched there
once and reused while its manifest matches the store's. Cache hits fetch nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from infra.settings import RemoteStore
from pipelines.manifest import MANIFEST_NAME, manifest_bytes
from pipelines.store.local import LocalStageStore
from pipelines.store.protocol import MissingOutputError, WorkArea

log = logging.getLogger(__name__)


class ObjectStageStore:
    """`<store uri>/<stage>/<fingerprint>/` in an object store, with a local working copy."""

    def __init__(self, remote: RemoteStore, cache: LocalStageStore) -> None:
        self.remote = remote
        self.cache = cache
        self._fs = remote.filesystem
        self._local = pafs.LocalFileSystem()

    def _path(self, stage: str, fingerprint: str) -> str:
        return f"{self.remote.root}/{stage}/{fingerprint}"

    def uri(self, stage: str, fingerprint: str) -> str:
        return f"{self.remote.uri}/{stage}/{fingerprint}"

    def location(self, stage: str, fingerprint: str) -> str:
        return self.uri(stage, fingerprint)

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        path = f"{self._path(stage, fingerprint)}/{MANIFEST_NAME}"
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as stream:
            return json.loads(stream.read().decode("utf-8"))

    def is_done(self, stage: str, fingerprint: str) -> bool:
        return self.manifest(stage, fingerprint) is not None

    def finished_fingerprints(self, stage: str) -> list[str]:
        listing = self._fs.get_file_info(pafs.FileSelector(f"{self.remote.root}/{stage}", allow_not_found=True))
        candidates = sorted(info.base_name for info in listing if info.type == pafs.FileType.Directory)
        return [fp for fp in candidates if not fp.startswith(".") and self.is_done(stage, fp)]

    def begin(self, stage: str, fingerprint: str) -> WorkArea:
        return self.cache.begin(stage, fingerprint)

    def publish(self, work: WorkArea, manifest: dict[str, Any]) -> Path:
        """Upload the attempt's output in place of any older copy, manifest last; keep it as the working copy."""
        target = self._path(work.stage, work.fingerprint)
        old_manifest = f"{target}/{MANIFEST_NAME}"
        if self._fs.get_file_info(old_manifest).type == pafs.FileType.File:
            self._fs.delete_file(old_manifest)  # first: from here on the old output no longer counts as done
        self._fs.delete_dir_contents(target, missing_dir_ok=True)
        pafs.copy_files(str(work.output), target, source_filesystem=self._local, destination_filesystem=self._fs)
        with self._fs.open_output_stream(old_manifest) as stream:
            stream.write(manifest_bytes(manifest))
        log.info("published %s/%s to %s", work.stage, work.fingerprint, self.uri(work.stage, work.fingerprint))
        return self.cache.publish(work, manifest)

    def abandon(self, work: WorkArea) -> None:
        self.cache.abandon(work)

    def local_copy(self, stage: str, fingerprint: str) -> Path | None:
        """The working copy if it matches the store's current manifest; nothing is fetched."""
        cached = self.cache.manifest(stage, fingerprint)
        if cached is None or cached != self.manifest(stage, fingerprint):
            return None
        return self.cache.output_dir(stage, fingerprint)

    def local_dir(self, stage: str, fingerprint: str) -> Path:
        """The output as a local directory, fetched into the working copy unless it is there already."""
        remote_manifest = self.manifest(stage, fingerprint)
        if remote_manifest is None:
            raise MissingOutputError(f"{self.uri(stage, fingerprint)} has no {MANIFEST_NAME}: the output is not finished")
        if self.cache.manifest(stage, fingerprint) == remote_manifest:
            return self.cache.output_dir(stage, fingerprint)
        temp = self.cache.staging_dir(stage)
        try:
            pafs.copy_files(self._path(stage, fingerprint), str(temp), source_filesystem=self._fs,
                            destination_filesystem=self._local)
            (temp / MANIFEST_NAME).unlink()  # the working copy's manifest is written last, by install
            log.info("fetched %s into %s", self.uri(stage, fingerprint), self.cache.output_dir(stage, fingerprint))
            return self.cache.install(stage, fingerprint, temp, remote_manifest)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
