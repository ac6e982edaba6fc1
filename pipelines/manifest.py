"""The manifest: written last into a stage's output directory, its presence means "done".

It lists every output file with its size, modification time, checksum and row count, and records
how the output was made. The size and time let a cache hit notice, with one stat per file, a file
cut short, overwritten or deleted since it was published (`changed_files`); the checksum lets
`llama2 verify` notice a change that kept both (`content_problems`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


class DamagedManifestError(ValueError):
    """A manifest.json that cannot be read as a manifest (cut short, edited by hand): the output is not done."""


def describe_files(root: Path, extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Size, modification time, sha256 and (for Parquet / Arrow IPC files) row count of every file under `root`.

    Publishing renames the directory, which keeps the times recorded here.
    """
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        stat = path.stat()
        with path.open("rb") as f:
            digest = sha256_of(f)
        entry: dict[str, Any] = {"path": rel, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        rows = _row_count(path)
        if rows is not None:
            entry["rows"] = rows
        entry.update((extra or {}).get(rel, {}))
        files.append(entry)
    return files


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The one serialization of a manifest, local or in an object store."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """A manifest from its bytes; `DamagedManifestError` naming `where` when they are not one."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedManifestError(f"{where} is damaged ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise DamagedManifestError(f"{where} is damaged (no list of files)")
    return manifest


def write_manifest(output_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a manifest."""
    target = output_dir / MANIFEST_NAME
    tmp = output_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_bytes(manifest_bytes(manifest))
    os.replace(tmp, target)
    return target


def read_manifest(output_dir: Path) -> dict[str, Any] | None:
    """The manifest in `output_dir`, None when there is none; `DamagedManifestError` when it cannot be read."""
    path = output_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    return parse_manifest(path.read_bytes(), str(path))


def differs(where: str, entry: Mapping[str, Any], size: int | None, mtime_ns: int | None = None) -> str | None:
    """How a stored file differs from its manifest entry, None if it does not: gone, another size, or
    another modification time (where the store keeps the recorded one: `mtime_ns` given)."""
    if size is None:
        return f"{where} is missing"
    if size != entry["bytes"]:
        return f"{where} holds {size} bytes, its manifest records {entry['bytes']}"
    if mtime_ns is not None and entry.get("mtime_ns", mtime_ns) != mtime_ns:
        return f"{where} was modified at {_when(mtime_ns)}, its manifest records {_when(entry['mtime_ns'])}"
    return None


def changed_files(output_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    """`differs` for every file the manifest lists under `output_dir`: a stat each, cheap enough for every cache hit."""
    problems = []
    for entry in manifest["files"]:
        path = output_dir / entry["path"]
        try:
            stat = path.stat()
        except FileNotFoundError:
            size = mtime_ns = None
        else:
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        problem = differs(str(path), entry, size, mtime_ns)
        if problem:
            problems.append(problem)
    return problems


def content_problems(
    manifest: Mapping[str, Any], where: str, open_file: Callable[[str], AbstractContextManager[BinaryIO]]
) -> list[str]:
    """Files whose bytes do not match the manifest's sha256, or that are gone: every byte is read.

    `open_file(relative path)` opens one for reading (a local file, an object) and raises
    FileNotFoundError when it is not there; `where` prefixes the paths in the messages.
    """
    problems = []
    for entry in manifest["files"]:
        name = f"{where}/{entry['path']}"
        try:
            with open_file(entry["path"]) as f:
                digest = sha256_of(f)
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if digest != entry["sha256"]:
            problems.append(f"{name} does not match the sha256 its manifest records: its bytes changed")
    return problems


def one_line(problems: list[str]) -> str:
    """The first of `problems` and how many more, for one line."""
    more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
    return problems[0] + more


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).isoformat(timespec="microseconds")


def _row_count(path: Path) -> int | None:
    try:
        if path.suffix == ".parquet":
            return pq.ParquetFile(path).metadata.num_rows
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                reader = ipc.open_file(source)
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (pa.ArrowInvalid, OSError):
        return None
    return None
