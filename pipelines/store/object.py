"""Stage outputs in an object store (S3, GCS, HDFS, ... through pyarrow's filesystems).

Object stores have no atomic rename, so "done" is carried by the manifest alone: publishing
deletes any old manifest first, uploads every file of the stage's output, and writes
`manifest.json` last. A crash part-way leaves objects without a manifest, which no reader takes
for a finished output and the next run replaces.

Stages read and write local files (memory-mapped Arrow shards, sentencepiece's trainer), so
each run works in a local working copy (`runtime.local_cache`, a `LocalStageStore`): a stage's
work area and its claims are there and its output is uploaded on publish; an upstream output is
fetched there once and reused while its manifest matches the store's and its files their recorded
sizes and times (a fetch gives each file the time its manifest records; a working copy changed
since is fetched again). Cache hits fetch nothing: they list the output's objects and compare
their sizes with the manifest (objects are written whole, so a changed one has another size or is
gone; `verify` reads their bytes).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from infra.settings import RemoteStore
from pipelines.manifest import (MANIFEST_NAME, DamagedManifestError, content_problems, differs, manifest_bytes,
                                one_line, parse_manifest)
from pipelines.store.local import LocalStageStore
from pipelines.store.protocol import Claim, MissingOutputError, WorkArea

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
        return self._inspect(stage, fingerprint)[0]

    def problem(self, stage: str, fingerprint: str) -> str | None:
        return self._inspect(stage, fingerprint)[1]

    def verify(self, stage: str, fingerprint: str) -> list[str] | None:
        """The objects' bytes, then those of the working copy where there is one (what stages read)."""
        try:
            manifest = self._stored_manifest(stage, fingerprint)
        except DamagedManifestError as err:
            return [str(err)]
        if manifest is None:
            return None
        path = self._path(stage, fingerprint)
        problems = content_problems(manifest, self.uri(stage, fingerprint),
                                    lambda rel: self._fs.open_input_stream(f"{path}/{rel}"))
        return problems + (self.cache.verify(stage, fingerprint) or [])

    def is_done(self, stage: str, fingerprint: str) -> bool:
        return self.manifest(stage, fingerprint) is not None

    def finished_fingerprints(self, stage: str) -> list[str]:
        listing = self._fs.get_file_info(pafs.FileSelector(f"{self.remote.root}/{stage}", allow_not_found=True))
        candidates = sorted(info.base_name for info in listing if info.type == pafs.FileType.Directory)
        return [fp for fp in candidates if not fp.startswith(".") and self.is_done(stage, fp)]

    def claim(self, stage: str, fingerprint: str, exclusive: bool) -> Claim:
        """Claimed in the working copy: it keeps out the runs of this machine (or of this `local_cache`)."""
        return self.cache.claim(stage, fingerprint, exclusive)

    def begin(self, claim: Claim) -> WorkArea:
        return self.cache.begin(claim)

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
        """The working copy if it matches the store's current manifest and is unchanged; nothing is fetched."""
        cached = self.cache.manifest(stage, fingerprint)
        if cached is None or cached != self.manifest(stage, fingerprint):
            return None
        return self.cache.output_dir(stage, fingerprint)

    def local_dir(self, stage: str, fingerprint: str) -> Path:
        """The output as a local directory, fetched into the working copy unless it is there, unchanged, already."""
        remote_manifest, problem = self._inspect(stage, fingerprint)
        if remote_manifest is None:
            raise MissingOutputError(problem or f"{self.uri(stage, fingerprint)} has no {MANIFEST_NAME}: the output is "
                                     "not finished")
        if self.cache.manifest(stage, fingerprint) == remote_manifest:
            return self.cache.output_dir(stage, fingerprint)
        temp = self.cache.staging_dir(stage)
        try:
            pafs.copy_files(self._path(stage, fingerprint), str(temp), source_filesystem=self._fs,
                            destination_filesystem=self._local)
            (temp / MANIFEST_NAME).unlink()  # the working copy's manifest is written last, by install
            for entry in remote_manifest["files"]:  # the recorded times, which the working copy is checked against
                if "mtime_ns" in entry:
                    os.utime(temp / entry["path"], ns=(entry["mtime_ns"], entry["mtime_ns"]))
            log.info("fetched %s into %s", self.uri(stage, fingerprint), self.cache.output_dir(stage, fingerprint))
            return self.cache.install(stage, fingerprint, temp, remote_manifest)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def _inspect(self, stage: str, fingerprint: str) -> tuple[dict[str, Any] | None, str | None]:
        """(manifest if the output is done, why a published output is not)."""
        try:
            manifest = self._stored_manifest(stage, fingerprint)
        except DamagedManifestError as err:
            return None, str(err)
        if manifest is None:
            return None, None
        root = self._path(stage, fingerprint)
        listing = self._fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        sizes = {info.path[len(root) + 1:]: info.size for info in listing if info.type == pafs.FileType.File}
        uri = self.uri(stage, fingerprint)
        changed = [p for e in manifest["files"] if (p := differs(f"{uri}/{e['path']}", e, sizes.get(e["path"])))]
        return (None, one_line(changed)) if changed else (manifest, None)

    def _stored_manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        path = f"{self._path(stage, fingerprint)}/{MANIFEST_NAME}"
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as stream:
            return parse_manifest(stream.read(), f"{self.uri(stage, fingerprint)}/{MANIFEST_NAME}")
