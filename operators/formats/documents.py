"""The documents / rejects / clusters tables (docs/CONTRACTS.md): how their shards are written and found.

Every stage that reads or writes documents (ingest, dedup, filter, train_tokenizer, tokenize)
goes through this module, so the format lives in one place.

Ray tasks write shards under names they can compute alone (`u00012-00003.parquet`: work
unit 12, its 4th shard); once every task is done the driver renames them, in that order, to
the contract's `part-NNNNN.parquet`. Names, row order and Parquet settings are fixed, so the
same input gives byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from operators.stage_io import MissingInputError, StageIO

DOCUMENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("record", pa.string()),
        pa.field("duplicate_of", pa.string()),
    ]
)

# `source` is an addition to the contract's (id, cluster_id, kept): ids are unique per source.
CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("cluster_id", pa.string(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
    ]
)


# Row groups of ~4 MB: the unit a downstream Ray task reads, so a 16 MB shard feeds 4 tasks.
ROW_GROUP_BYTES = 4 * 2**20


def write_table(table: pa.Table, path: Path) -> int:
    """Write one shard with fixed settings (zstd, ~4 MB row groups); returns its rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows_per_group = max(1, math.ceil(table.num_rows * ROW_GROUP_BYTES / max(1, table.nbytes)))
    pq.write_table(table, path, compression="zstd", compression_level=1, row_group_size=rows_per_group)
    return table.num_rows


def unit_shard_name(unit: int, shard: int) -> str:
    return f"u{unit:05d}-{shard:05d}.parquet"


def publish_parts(directory: Path, schema: pa.Schema) -> list[Path]:
    """Rename a directory's unit shards to part-00000.parquet, ... in unit/shard order.

    A directory that received no rows gets one empty part, so readers always find the schema.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shards = sorted(directory.glob("u*.parquet"))
    if not shards:
        write_table(schema.empty_table(), directory / "part-00000.parquet")
        return [directory / "part-00000.parquet"]
    parts = []
    for i, shard in enumerate(shards):
        part = directory / f"part-{i:05d}.parquet"
        shard.rename(part)
        parts.append(part)
    return parts


def part_files(directory: Path) -> list[Path]:
    """The contract's shards of a documents/rejects directory, in order."""
    return sorted(directory.glob("part-*.parquet"))


def rejects_table(rows: Iterable[dict], stage: str) -> pa.Table:
    """Rows of {id, source, reason, record, duplicate_of?} as a rejects table for `stage`."""
    rows = list(rows)
    return pa.table(
        {
            "id": [r["id"] for r in rows],
            "source": [r["source"] for r in rows],
            "stage": [stage] * len(rows),
            "reason": [r["reason"] for r in rows],
            "record": [r.get("record") for r in rows],
            "duplicate_of": [r.get("duplicate_of") for r in rows],
        },
        schema=REJECTS_SCHEMA,
    )


def document_shards(io: StageIO, role: str = "documents") -> list[Path]:
    """The `documents/part-*.parquet` files of the input behind `role`, in order."""
    directory = io.input(role) / "documents"
    shards = part_files(directory)
    if not shards:
        raise MissingInputError(f"no document shards in {directory}; run the stage that makes {io.source_of(role)}")
    return shards
