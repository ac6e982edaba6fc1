"""The manifest: written last into a stage's output directory, its presence means "done".

It lists every output file with its size, checksum and row count, so a reader can verify an
output without trusting the directory listing, and records how the output was made.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


def describe_files(root: Path, extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Size, sha256 and (for Parquet / Arrow IPC files) row count of every file under `root`."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        entry: dict[str, Any] = {"path": rel, "bytes": path.stat().st_size, "sha256": _sha256(path)}
        rows = _row_count(path)
        if rows is not None:
            entry["rows"] = rows
        entry.update((extra or {}).get(rel, {}))
        files.append(entry)
    return files


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The one serialization of a manifest, local or in an object store."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_manifest(output_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a manifest."""
    target = output_dir / MANIFEST_NAME
    tmp = output_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_bytes(manifest_bytes(manifest))
    os.replace(tmp, target)
    return target


def read_manifest(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
