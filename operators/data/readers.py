"""Input files → work units → raw records, for JSONL (plain/.gz/.zst), Parquet, Arrow IPC and text dirs.

A work unit is what one Ray task reads: a byte range of a plain JSONL file, a run of row groups
of a Parquet file, a whole compressed or Arrow file (a shard of a Hugging Face `datasets` folder
written by save_to_disk), or a batch of small text files.
Each raw record carries a *location* (relative path + byte offset / row index) from which a
stable id can be derived, and is either a parsed record or a `Broken` line with its reason.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from operators.stage_io import StageInputError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSIONS = ("", ".gz", ".zst")


class IngestInputError(StageInputError):
    """An input that makes the run impossible: a missing path, a glob matching nothing, an unreadable file."""


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    relpath: str  # relative to the configured directory / glob base; part of derived ids


@dataclass(frozen=True)
class WorkUnit:
    index: int
    source: str
    format: str
    files: tuple[InputFile, ...]
    start: int = 0  # byte offset (plain JSONL) or first row group (Parquet)
    stop: int | None = None  # exclusive; None = to the end
    owner: str = "ingest source"  # what the messages call the source ("ingest source", "chat_data source")


@dataclass(frozen=True)
class Broken:
    """A record that could not be parsed into a JSON object."""

    reason: str
    text: str  # the raw record, decoded as far as possible


@dataclass(frozen=True)
class RawRecord:
    relpath: str
    location: str  # "@<byte offset>", "#<row>" or "" (a whole text file)
    value: dict | Broken


def resolve_files(source: str, fmt: str, patterns: list[str], owner: str = "ingest source") -> list[InputFile]:
    """Expand files, directories and globs of one source, in sorted order, without repeats; `owner`
    is what the error calls the source (whose config section it is in)."""
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        matches = _expand(pattern, fmt)
        if not matches:
            raise IngestInputError(
                f"{owner} {source!r}: input path {pattern!r} does not exist or matches no {fmt} file"
            )
        for f in matches:
            files.setdefault(os.path.realpath(f.path), f)
    return list(files.values())


def check_source(source: str, fmt: str, files: list[InputFile], text_field: str) -> None:
    """What can be checked without reading the data: every Parquet file opens and has the text
    column, and not every file of the source is empty."""
    if all(os.path.getsize(f.path) == 0 for f in files):
        raise IngestInputError(f"ingest source {source!r}: every input file is empty ({files[0].path}, ...)")
    if fmt != "parquet":
        return
    for f in files:
        try:
            schema = pq.read_schema(f.path)
        except Exception as err:  # pyarrow raises several types for a file that is not Parquet
            raise IngestInputError(f"ingest source {source!r}: cannot read Parquet file {f.path}: {err}") from None
        if text_field not in schema.names:
            raise IngestInputError(
                f"ingest source {source!r}: {f.path} has no column {text_field!r} (columns: {', '.join(schema.names)}); "
                "set the source's text_field"
            )


def _expand(pattern: str, fmt: str) -> list[InputFile]:
    path = Path(pattern).expanduser().absolute()
    if path.is_file() and not glob.has_magic(pattern):
        return [InputFile(str(path), path.name)]  # named explicitly: taken whatever its suffix
    if glob.has_magic(pattern):
        base = _glob_base(path)
        hits = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        hits = [f for h in hits for f in (_walk(h) if h.is_dir() else [h])]
    elif path.is_dir():
        base, hits = path, _walk(path)
    else:
        return []
    return [InputFile(str(h), h.relative_to(base).as_posix()) for h in hits if _matches_format(h, fmt)]


def _glob_base(path: Path) -> Path:
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts)


def _walk(directory: Path) -> list[Path]:
    """Regular files under a directory, recursively, hidden files and folders skipped, sorted."""
    out = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / n for n in names if not n.startswith("."))
    return sorted(out)


def _matches_format(path: Path, fmt: str) -> bool:
    name = path.name.lower()
    if fmt == "jsonl":
        return any(name.endswith(s + c) for s in JSONL_SUFFIXES for c in COMPRESSIONS)
    if fmt == "parquet":
        return name.endswith(".parquet")
    if fmt == "arrow":
        return name.endswith(".arrow")
    return True


def plan_units(source: str, fmt: str, files: list[InputFile], chunk_bytes: int, first_index: int,
               owner: str = "ingest source") -> list[WorkUnit]:
    """Split one source's files into work units of about `chunk_bytes` each."""
    units: list[WorkUnit] = []

    def add(files_: tuple[InputFile, ...], start: int = 0, stop: int | None = None) -> None:
        units.append(WorkUnit(first_index + len(units), source, fmt, files_, start, stop, owner))

    if fmt == "text":
        batch: list[InputFile] = []
        size = 0
        for f in files:
            batch.append(f)
            size += os.path.getsize(f.path)
            if size >= chunk_bytes:
                add(tuple(batch))
                batch, size = [], 0
        if batch:
            add(tuple(batch))
        return units
    for f in files:
        if fmt == "jsonl" and not f.path.endswith((".gz", ".zst")):
            size = os.path.getsize(f.path)
            n = max(1, math.ceil(size / chunk_bytes))
            step = math.ceil(size / n) if size else 0
            for i in range(n):
                add((f,), i * step, min(size, (i + 1) * step) if i < n - 1 else None)
        elif fmt == "parquet":
            for start, stop in _row_group_runs(f, chunk_bytes):
                add((f,), start, stop)
        else:
            add((f,))
    return units


def _row_group_runs(f: InputFile, chunk_bytes: int) -> list[tuple[int, int]]:
    try:
        meta = pq.ParquetFile(f.path).metadata
    except Exception as err:  # pyarrow raises several types for a bad file
        raise IngestInputError(f"cannot read Parquet file {f.path}: {err}") from err
    runs, start, size = [], 0, 0
    for i in range(meta.num_row_groups):
        size += meta.row_group(i).total_byte_size
        if size >= chunk_bytes:
            runs.append((start, i + 1))
            start, size = i + 1, 0
    if start < meta.num_row_groups or not runs:
        runs.append((start, meta.num_row_groups))
    return runs


def read_unit(unit: WorkUnit) -> Iterator[RawRecord]:
    """The raw records of one work unit, in file order."""
    for f in unit.files:
        try:
            if unit.format == "jsonl":
                yield from _read_jsonl(f, unit.start, unit.stop)
            elif unit.format == "parquet":
                yield from _read_parquet(f, unit.start, unit.stop)
            elif unit.format == "arrow":
                yield from _read_arrow(f)
            else:
                yield _read_text(f)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException) as err:
            raise IngestInputError(
                f"{unit.owner} {unit.source!r}: cannot read {f.path} (corrupt or truncated?): {err}"
            ) from None


def _open_jsonl(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _read_jsonl(f: InputFile, start: int, stop: int | None) -> Iterator[RawRecord]:
    with _open_jsonl(f.path) as fh:
        pos = start
        if start > 0:
            # A unit owns the lines that *start* in [start, stop): skip the one already begun.
            fh.seek(start - 1)
            pos = start - 1 + len(fh.readline())
        for line in fh:
            if stop is not None and pos >= stop:
                break
            here, pos = pos, pos + len(line)
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                yield RawRecord(f.relpath, f"@{here}", Broken("blank_line", ""))
                continue
            yield RawRecord(f.relpath, f"@{here}", _parse_json(raw))


def _parse_json(raw: bytes) -> dict | Broken:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Broken("invalid_utf8", raw.decode("utf-8", "backslashreplace"))
    try:
        value = json.loads(text)
    except ValueError:
        return Broken("invalid_json", text)
    if not isinstance(value, dict):
        return Broken("wrong_type", text)
    return value


def _read_parquet(f: InputFile, start: int, stop: int | None) -> Iterator[RawRecord]:
    pf = pq.ParquetFile(f.path)
    row = sum(pf.metadata.row_group(i).num_rows for i in range(start))
    for group in range(start, stop if stop is not None else pf.metadata.num_row_groups):
        for record in pf.read_row_group(group).to_pylist():
            yield RawRecord(f.relpath, f"#{row}", record)
            row += 1


def _read_arrow(f: InputFile) -> Iterator[RawRecord]:
    """An Arrow IPC stream (what `datasets` save_to_disk writes) or IPC file, memory-mapped."""
    with pa.memory_map(f.path) as source:
        try:
            batches: Iterator[pa.RecordBatch] = iter(pa.ipc.open_stream(source))
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                yield RawRecord(f.relpath, f"#{row}", record)
                row += 1


def _read_text(f: InputFile) -> RawRecord:
    data = Path(f.path).read_bytes()
    try:
        return RawRecord(f.relpath, "", {"text": data.decode("utf-8"), "path": f.relpath})
    except UnicodeDecodeError:
        broken = json.dumps({"path": f.relpath, "text": data.decode("utf-8", "backslashreplace")}, ensure_ascii=False)
        return RawRecord(f.relpath, "", Broken("invalid_utf8", broken))
