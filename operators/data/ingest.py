"""Stage `ingest`: configured sources → documents Parquet shards + rejects with reasons.

    sources ──resolve paths/globs──▶ files ──plan──▶ work units (≈ chunk_bytes each)
    one Ray task per unit: read → validate → documents/u…parquet + rejects/u…parquet
                           + its ids, hash-partitioned, in the stage's scratch directory
    repeats_to_rejects: a shuffle of those ids → later copies of a (source, id) moved to rejects
    driver: file names and counts only → part-NNNNN names

Every record read ends up in documents or rejects, so counts satisfy in = out + rejected. The
input files are resolved and checked (`input_files`) before Ray starts, and their identity
(path, size, modification time; or content hashes) is part of the stage's fingerprint. A
source that yields no document at all is an error naming it, unless `allow_empty_sources`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.data import repeats_to_rejects
from operators.data.document_records import Fields, to_row
from operators.data.readers import IngestInputError, InputFile, WorkUnit, check_source, plan_units, read_unit, resolve_files
from operators.formats.documents import (
    DOCUMENTS_SCHEMA,
    REJECTS_SCHEMA,
    publish_parts,
    rejects_table,
    unit_shard_name,
    write_table,
)
from operators.stage_io import StageIO, StageStats

log = logging.getLogger(__name__)

__all__ = ["IngestConfig", "IngestInputError", "SourceConfig", "input_files", "run_ingest"]


class SourceConfig(BaseModel):
    """One input corpus: a name, where its files are, and how to read them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="source name written to every document's `source` column")
    paths: list[str] = Field(
        min_length=1, json_schema_extra={"config_path": True},
        description="files, directories or glob patterns (relative: to the config file that names them)",
    )
    format: Literal["jsonl", "parquet", "text"] = Field(
        description="jsonl (plain, .gz or .zst), parquet, or text (one document per file)"
    )
    text_field: str = Field(default="text", description="record field holding the document text")
    id_field: str = Field(default="id", description="record field holding the document id; kept as `id` when present")
    url_field: str = Field(default="url", description="record field holding the document URL (optional)")


class IngestConfig(BaseModel):
    """Which corpora to read and how big the pieces of work are."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceConfig] = Field(default_factory=list, description="input corpora, read in this order")
    # No number in the paper; 10 MB holds any real web page or book chapter and stops a
    # runaway record (a whole dump on one line) from reaching the tokenizer.
    max_doc_bytes: int = Field(default=10_000_000, gt=0, description="texts larger than this (UTF-8 bytes) are rejected as oversized")
    # 16 MB pieces keep 2+ tasks busy even on an 18 MB corpus and bound a task's memory.
    chunk_bytes: int = Field(default=16 * 2**20, gt=0, description="input bytes per Ray task and per output shard (about)")
    allow_empty_sources: bool = Field(
        default=False, description="accept a source that yields no document (else it is an error naming the source)"
    )
    # 1 GB of input holds ~1-10 M documents, whose keys (~50 bytes each) one task sorts in memory.
    id_partition_bytes: int = Field(
        default=2**30, gt=0,
        description="input bytes (as stored, compressed or not) whose document ids one task checks for repeats "
        "(the duplicate-id shuffle's partition)",
    )
    identify_inputs_by: Literal["stat", "content"] = Field(
        default="stat",
        description="how an input file's identity enters the fingerprint: stat = path, size and modification "
        "time (cheap); content = sha256 of its bytes (survives copies and touch, reads every byte)",
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> IngestConfig:
        names = [s.name for s in self.sources]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"source names must be unique; repeated: {duplicates}")
        return self


def input_files(config: IngestConfig) -> list[list[Any]]:
    """[source, path, size, mtime_ns] (or [source, path, sha256]) of every input file, after checking each
    source: called before any stage runs, so a missing path or unreadable file stops the run at once."""
    if not config.sources:
        raise IngestInputError("ingest.sources is empty: configure at least one source {name, paths, format}")
    listing: list[list[Any]] = []
    for source in config.sources:
        files = resolve_files(source.name, source.format, source.paths)
        check_source(source.name, source.format, files, source.text_field)
        listing.extend([source.name, *_identity(f, config.identify_inputs_by)] for f in files)
    return listing


def _identity(f: InputFile, mode: str) -> list[Any]:
    path = Path(f.path)
    if mode == "content":
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return [f.path, digest.hexdigest()]
    stat = path.stat()
    return [f.path, stat.st_size, stat.st_mtime_ns]


def run_ingest(config: IngestConfig, io: StageIO) -> StageStats:
    """Read every configured source into `documents/` and `rejects/` under `io.output_dir`."""
    units: list[WorkUnit] = []
    for source in config.sources:
        files = resolve_files(source.name, source.format, source.paths)
        units += plan_units(source.name, source.format, files, config.chunk_bytes, first_index=len(units))
    fields = {s.name: Fields(s.text_field, s.id_field, s.url_field) for s in config.sources}
    docs_dir, rejects_dir = io.output_dir / "documents", io.output_dir / "rejects"
    scratch = io.scratch() / "duplicate-ids"
    shutil.rmtree(scratch, ignore_errors=True)  # a failed attempt's files
    stored_bytes = sum(Path(path).stat().st_size for path in {f.path for u in units for f in u.files})
    partitions = repeats_to_rejects.partitions_for(stored_bytes, config.id_partition_bytes)
    futures = [
        _ingest_unit.remote(u, fields[u.source], config.max_doc_bytes, config.chunk_bytes, str(docs_dir),
                            str(rejects_dir), io.stage, str(repeats_to_rejects.keys_file(scratch, u.index)), partitions)
        for u in units
    ]
    stats = ray.get(futures)
    folders = {s.name: docs_dir for s in config.sources}
    duplicates = repeats_to_rejects.reject_repeats(scratch, len(units), partitions, folders, rejects_dir, io.stage,
                                                   reason="duplicate_id")
    shutil.rmtree(scratch, ignore_errors=True)
    publish_parts(docs_dir, DOCUMENTS_SCHEMA)
    publish_parts(rejects_dir, REJECTS_SCHEMA)

    reasons: Counter = Counter()
    per_source: dict[str, Counter] = {s.name: Counter() for s in config.sources}
    for unit, st in zip(units, stats):
        reasons.update(st["reasons"])
        per_source[unit.source].update({"in": st["in"], "out": st["out"], "rejected": st["rejected"]})
    for source, n in duplicates.items():
        reasons["duplicate_id"] += n
        per_source[source].update({"out": -n, "rejected": n})
    _check_sources_yielded(per_source, config.allow_empty_sources)
    records_in = sum(c["in"] for c in per_source.values())
    documents_out = sum(c["out"] for c in per_source.values())
    in_bytes = sum(st["bytes"] for st in stats)
    log.info("ingest: %d records from %d work units -> %d documents, %d rejects %s",
             records_in, len(units), documents_out, sum(reasons.values()), dict(reasons))
    return StageStats(
        unit="documents",
        count_in=records_in,
        count_out=documents_out,
        rejected=dict(reasons),
        output_rows={"documents/": documents_out, "rejects/": sum(reasons.values())},
        metrics={"input/mb": in_bytes / 1e6, "input/work_units": len(units), "input/id_partitions": partitions},
        summary={"per_source": {n: dict(c) for n, c in per_source.items()}},
    )


def _check_sources_yielded(per_source: dict[str, Counter], allow_empty: bool) -> None:
    """A source with no document is almost always a mistake (wrong field name, empty export): say which."""
    empty = {name: dict(c) for name, c in per_source.items() if c["out"] == 0}
    if empty and not allow_empty:
        name, counts = next(iter(empty.items()))
        raise IngestInputError(
            f"ingest source {name!r} yielded no documents ({counts.get('in', 0)} records read, all rejected; see "
            f"its text_field/format, or set ingest.allow_empty_sources=true to accept it)"
        )


@ray.remote(num_cpus=1)
def _ingest_unit(
    unit: WorkUnit, fields: Fields, max_doc_bytes: int, shard_bytes: int, docs_dir: str, rejects_dir: str, stage: str,
    keys_path: str, id_partitions: int,
) -> dict:
    """Read one work unit; write its documents and rejects shards and its ids' keys file; return counts."""
    docs: list[dict] = []
    rejects: list[dict] = []
    reasons: Counter = Counter()
    n_in = pending_bytes = 0
    doc_shards: list[pa.Array] = []  # the id column of each shard written

    def flush_docs() -> None:
        nonlocal docs, pending_bytes
        name = unit_shard_name(unit.index, len(doc_shards))
        table = pa.Table.from_pylist(docs, schema=DOCUMENTS_SCHEMA)
        write_table(table, Path(docs_dir) / name)
        doc_shards.append(table.column("id").combine_chunks())
        docs, pending_bytes = [], 0

    for raw in read_unit(unit):
        n_in += 1
        row, reason = to_row(raw, unit.source, fields, max_doc_bytes)
        if reason is None:
            docs.append(row)
            pending_bytes += len(row["text"])
            if pending_bytes >= shard_bytes:
                flush_docs()
        else:
            rejects.append(row)
            reasons[reason] += 1
    if docs:
        flush_docs()
    if rejects:
        write_table(rejects_table(rejects, stage), Path(rejects_dir) / unit_shard_name(unit.index, 0))
    repeats_to_rejects.write_keys(Path(keys_path), unit.source, unit.index, doc_shards, id_partitions)
    return {
        "in": n_in,
        "out": sum(len(ids) for ids in doc_shards),
        "rejected": len(rejects),
        "reasons": dict(reasons),
        "bytes": _unit_bytes(unit),
    }


def _unit_bytes(unit: WorkUnit) -> int:
    """Bytes of input this unit covers (compressed size for .gz/.zst)."""
    if unit.format == "jsonl" and len(unit.files) == 1:
        size = Path(unit.files[0].path).stat().st_size
        return (unit.stop if unit.stop is not None else size) - unit.start
    if unit.format == "parquet":
        meta = pq.ParquetFile(unit.files[0].path).metadata
        stop = unit.stop if unit.stop is not None else meta.num_row_groups
        return sum(meta.row_group(i).total_byte_size for i in range(unit.start, stop))
    return sum(Path(f.path).stat().st_size for f in unit.files)
