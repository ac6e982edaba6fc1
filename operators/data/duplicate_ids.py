"""Duplicate (source, id) pairs across all of ingest's output, found by a hash-partitioned shuffle.

The driver never sees an id: each ingest task writes its documents' keys into one partitioned file
in the stage's scratch directory, one reduce task per id partition finds the repeats there, and one
fix task per group of units moves them from the documents shards to rejects.

    ingest task u ──▶ ids/u00007.arrow  (source, id, unit, shard, row), batch p = ids hashing to p
    reduce task p ──▶ repeats/p00003.arrow  every occurrence of a (source, id) after its first in
                      (unit, shard, row) order, batch b = the repeats in units with unit % B == b
    fix task b ──▶ rewrites only the shards of its units that hold a repeat (+ a "-dup" rejects shard)

The driver holds file names and per-source counts: O(units), whatever the number of documents.
Files are written by rename (`partitioned_files`), so a retried task replaces, never half-writes.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash

from operators.data.json_records import rows_as_json
from operators.data.partitioned_files import MAX_PARTITIONS, read_partition, write_partitioned
from operators.formats.documents import DOCUMENTS_SCHEMA, rejects_table, unit_shard_name, write_table

# shard_rows: the rows the shard had when ingest wrote it, so that a retried fix task can tell a shard
# it already rewrote (rows moved out) from one it has not.
KEYS_SCHEMA = pa.schema([("source", pa.string()), ("id", pa.string()), ("unit", pa.int32()),
                         ("shard", pa.int32()), ("row", pa.int32()), ("shard_rows", pa.int32())])
REPEATS_SCHEMA = pa.schema([("unit", pa.int32()), ("shard", pa.int32()), ("row", pa.int32()), ("shard_rows", pa.int32())])


def partitions_for(input_bytes: int, bytes_per_partition: int) -> int:
    """Id partitions for this much input: a reduce task holds the keys of ~`bytes_per_partition` of input."""
    return max(1, min(MAX_PARTITIONS, math.ceil(input_bytes / bytes_per_partition)))


def keys_file(scratch: Path, unit: int) -> Path:
    return scratch / "ids" / f"u{unit:06d}.arrow"


def write_keys(path: Path, source: str, unit: int, shards: list[pa.Array], partitions: int) -> None:
    """One ingest task's keys, partitioned by a hash of the id (the same id lands in the same
    partition whichever task read it). `shards[k]` is the id column of the task's k-th shard."""
    ids = pa.concat_arrays(shards) if shards else pa.array([], pa.string())
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids.to_pylist()), np.uint64, len(ids))
    table = pa.table({
        "source": pa.array([source] * len(ids), pa.string()),
        "id": ids,
        "unit": pa.array(np.full(len(ids), unit, np.int32)),
        "shard": pa.array(np.repeat(np.arange(len(shards), dtype=np.int32), [len(s) for s in shards])),
        "row": pa.array(np.concatenate([np.arange(len(s), dtype=np.int32) for s in shards] or [np.zeros(0, np.int32)])),
        "shard_rows": pa.array(np.repeat(np.array([len(s) for s in shards], np.int32), [len(s) for s in shards])),
    }, schema=KEYS_SCHEMA)
    write_partitioned(path, table, (hashes % np.uint64(partitions)).astype(np.int64), partitions)


def reject_duplicate_ids(scratch: Path, units: int, partitions: int, docs_dir: Path, rejects_dir: Path,
                         stage: str) -> dict[str, int]:
    """Keep the first document of each (source, id) in (unit, shard, row) order and move the later ones
    to rejects (reason duplicate_id); returns the moved count per source."""
    key_files = [str(keys_file(scratch, u)) for u in range(units)]
    reduced = ray.get([_find_repeats.remote(key_files, p, partitions, str(scratch / "repeats" / f"p{p:05d}.arrow"))
                       for p in range(partitions)])
    moved: Counter = Counter()
    files_by_bucket: dict[int, list[str]] = {}
    for path, per_source, buckets in reduced:
        moved.update(per_source)
        for b in buckets:
            files_by_bucket.setdefault(b, []).append(path)
    ray.get([_move_to_rejects.remote(files, b, str(docs_dir), str(rejects_dir), stage)
             for b, files in sorted(files_by_bucket.items())])
    return dict(moved)


@ray.remote(num_cpus=1)
def _find_repeats(key_files: list[str], partition: int, buckets: int, out: str) -> tuple[str, dict[str, int], list[int]]:
    """Repeats among the ids of one partition: (their file, count per source, fix buckets holding them)."""
    keys = read_partition([Path(f) for f in key_files], partition, KEYS_SCHEMA)
    if keys.num_rows < 2:
        return out, {}, []
    keys = keys.take(pc.sort_indices(keys, [(c, "ascending") for c in ("source", "id", "unit", "shard", "row")]))
    same = pc.and_(pc.equal(keys["source"][1:], keys["source"][:-1]), pc.equal(keys["id"][1:], keys["id"][:-1]))
    repeat = np.concatenate([[False], same.to_numpy(zero_copy_only=False)])
    if not repeat.any():
        return out, {}, []
    repeats = keys.filter(pa.array(repeat))
    bucket = repeats["unit"].to_numpy() % buckets
    write_partitioned(Path(out), repeats.select(REPEATS_SCHEMA.names), bucket.astype(np.int64), buckets)
    per_source = pc.value_counts(repeats["source"]).to_pylist()
    return out, {c["values"]: c["counts"] for c in per_source}, sorted(set(bucket.tolist()))


@ray.remote(num_cpus=1)
def _move_to_rejects(repeat_files: list[str], bucket: int, docs_dir: str, rejects_dir: str, stage: str) -> None:
    """Rewrite every shard of this bucket's units that holds a repeat, its repeats moved to a rejects shard.

    Idempotent, as Ray may re-run it: the rejects shard is written before the documents shard, each
    by rename, and a shard that already lost its repeats (a previous attempt's) is left as it is."""
    repeats = read_partition([Path(f) for f in repeat_files], bucket, REPEATS_SCHEMA)
    for (unit, shard), (shard_rows, rows) in _rows_by_shard(repeats).items():
        path = Path(docs_dir) / unit_shard_name(unit, shard)
        table = pq.read_table(path, schema=DOCUMENTS_SCHEMA)
        if table.num_rows == shard_rows - len(rows):
            continue
        if table.num_rows != shard_rows:
            raise RuntimeError(f"{path} has {table.num_rows} rows; ingest wrote {shard_rows}")
        mask = np.zeros(table.num_rows, bool)
        mask[rows] = True
        moved = table.filter(pa.array(mask))
        rejects = [{"id": i, "source": s, "reason": "duplicate_id", "record": r}
                   for i, s, r in zip(moved["id"].to_pylist(), moved["source"].to_pylist(), rows_as_json(moved).to_pylist())]
        _write_by_rename(rejects_table(rejects, stage), Path(rejects_dir) / path.name.replace(".parquet", "-dup.parquet"))
        _write_by_rename(table.filter(pa.array(~mask)), path)


def _write_by_rename(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_table(table, tmp)
    os.replace(tmp, path)


def _rows_by_shard(repeats: pa.Table) -> dict[tuple[int, int], tuple[int, np.ndarray]]:
    """(unit, shard) -> (the shard's rows as written, the rows to move)."""
    units, shards, rows, shard_rows = (repeats[c].to_numpy() for c in ("unit", "shard", "row", "shard_rows"))
    order = np.lexsort((rows, shards, units))
    units, shards, rows, shard_rows = units[order], shards[order], rows[order], shard_rows[order]
    starts = np.flatnonzero(np.r_[True, (units[1:] != units[:-1]) | (shards[1:] != shards[:-1])])
    ends = np.r_[starts[1:], len(units)]
    return {(int(units[a]), int(shards[a])): (int(shard_rows[a]), rows[a:b]) for a, b in zip(starts, ends)}
