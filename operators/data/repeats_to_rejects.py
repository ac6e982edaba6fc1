"""Rows whose key repeats an earlier row's, anywhere in a stage's output, moved to rejects.

Ingest's duplicate (source, id) check and chat_data's duplicate contents are this one job, done by a
hash-partitioned shuffle in the stage's scratch directory so that the driver never sees a key: each
task writes its rows' keys into one partitioned file, one reduce task per key partition finds the
repeats there, and one fix task per group of units moves them from their shards to rejects.

    stage task u ──▶ keys/u00007.arrow  (group, key, unit, shard, row, shard_rows), batch p = keys hashing to p
    reduce task p ──▶ repeats/p00003.arrow  every row of a (group, key) after its first in (unit, shard, row)
                      order, batch b = the repeats in units with unit % B == b
    fix task b ──▶ rewrites only the shards of its units that hold a repeat (+ a "-dup" rejects shard)

A group is a namespace of keys whose shards share one folder, named `unit_shard_name(unit, shard)`
(ingest: a source, all in documents/; chat_data: a kind, in dialogs/, preferences/ or prompts/).
The driver holds file names and per-group counts: O(units), whatever the number of rows. Ray may run a
task twice (its worker died after it wrote): files are written by rename, so a retry replaces and never
half-writes, and a fix task leaves a shard that already lost its repeats as it is, so no row moves twice.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash

from operators.data.json_records import rows_as_json
from operators.data.partitioned_files import MAX_PARTITIONS, read_partition, write_partitioned
from operators.formats.documents import rejects_table, unit_shard_name, write_table

# shard_rows: the rows the shard had when its stage task wrote it, so that a retried fix task can tell
# a shard it already rewrote (rows moved out) from one it has not.
KEYS_SCHEMA = pa.schema([("group", pa.string()), ("key", pa.string()), ("unit", pa.int32()),
                         ("shard", pa.int32()), ("row", pa.int32()), ("shard_rows", pa.int32())])
REPEATS_SCHEMA = pa.schema([("group", pa.string()), ("unit", pa.int32()), ("shard", pa.int32()), ("row", pa.int32()),
                            ("shard_rows", pa.int32())])


def partitions_for(input_bytes: int, bytes_per_partition: int) -> int:
    """Key partitions for this much input: a reduce task holds the keys of ~`bytes_per_partition` of input."""
    return max(1, min(MAX_PARTITIONS, math.ceil(input_bytes / bytes_per_partition)))


def keys_file(scratch: Path, unit: int) -> Path:
    return scratch / "keys" / f"u{unit:06d}.arrow"


def write_keys(path: Path, group: str, unit: int, shards: list[pa.Array], partitions: int) -> None:
    """One stage task's keys, partitioned by a hash of the key (the same key lands in the same partition
    whichever task wrote it). `shards[k]` holds the keys of the rows of the task's k-th shard, in order."""
    keys = pa.concat_arrays(shards) if shards else pa.array([], pa.string())
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(k.encode()) for k in keys.to_pylist()), np.uint64, len(keys))
    lengths = np.array([len(s) for s in shards], np.int32)
    table = pa.table({
        "group": pa.array([group] * len(keys), pa.string()),
        "key": keys,
        "unit": pa.array(np.full(len(keys), unit, np.int32)),
        "shard": pa.array(np.repeat(np.arange(len(shards), dtype=np.int32), lengths)),
        "row": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in lengths] or [np.zeros(0, np.int32)])),
        "shard_rows": pa.array(np.repeat(lengths, lengths)),
    }, schema=KEYS_SCHEMA)
    write_partitioned(path, table, (hashes % np.uint64(partitions)).astype(np.int64), partitions)


def reject_repeats(scratch: Path, units: int, partitions: int, folders: Mapping[str, Path], rejects_dir: Path,
                   stage: str, reason: str) -> dict[str, int]:
    """Keep the first row of each (group, key) in (unit, shard, row) order and move the later ones to
    rejects with `reason`; `folders` maps a group to the folder of its shards. Returns the moved count
    per group."""
    key_files = [str(keys_file(scratch, u)) for u in range(units)]
    reduced = ray.get([_find_repeats.remote(key_files, p, partitions, str(scratch / "repeats" / f"p{p:05d}.arrow"))
                       for p in range(partitions)])
    moved: Counter = Counter()
    files_by_bucket: dict[int, list[str]] = {}
    for path, per_group, buckets in reduced:
        moved.update(per_group)
        for b in buckets:
            files_by_bucket.setdefault(b, []).append(path)
    folder_names = {group: str(folder) for group, folder in folders.items()}
    ray.get([move_repeats.remote(files, b, folder_names, str(rejects_dir), stage, reason)
             for b, files in sorted(files_by_bucket.items())])
    return dict(moved)


@ray.remote(num_cpus=1)
def _find_repeats(key_files: list[str], partition: int, buckets: int, out: str) -> tuple[str, dict[str, int], list[int]]:
    """Repeats among the keys of one partition: (their file, count per group, fix buckets holding them)."""
    keys = read_partition([Path(f) for f in key_files], partition, KEYS_SCHEMA)
    if keys.num_rows < 2:
        return out, {}, []
    keys = keys.take(pc.sort_indices(keys, [(c, "ascending") for c in ("group", "key", "unit", "shard", "row")]))
    same = pc.and_(pc.equal(keys["group"][1:], keys["group"][:-1]), pc.equal(keys["key"][1:], keys["key"][:-1]))
    repeat = np.concatenate([[False], same.to_numpy(zero_copy_only=False)])
    if not repeat.any():
        return out, {}, []
    repeats = keys.filter(pa.array(repeat))
    bucket = repeats["unit"].to_numpy() % buckets
    write_partitioned(Path(out), repeats.select(REPEATS_SCHEMA.names), bucket.astype(np.int64), buckets)
    per_group = pc.value_counts(repeats["group"]).to_pylist()
    return out, {c["values"]: c["counts"] for c in per_group}, sorted(set(bucket.tolist()))


@ray.remote(num_cpus=1)
def move_repeats(repeat_files: list[str], bucket: int, folders: Mapping[str, str], rejects_dir: str, stage: str,
                 reason: str) -> None:
    """Rewrite every shard of this bucket's units that holds a repeat, its repeats moved to a rejects shard.

    Idempotent, as Ray may re-run it: the rejects shard is written before the shard it comes from, each
    by rename, and a shard that already lost its repeats (a previous attempt's) is left as it is."""
    repeats = read_partition([Path(f) for f in repeat_files], bucket, REPEATS_SCHEMA)
    for (group, unit, shard), (shard_rows, rows) in _rows_by_shard(repeats).items():
        path = Path(folders[group]) / unit_shard_name(unit, shard)
        table = pq.read_table(path)
        if table.num_rows == shard_rows - len(rows):
            continue
        if table.num_rows != shard_rows:
            raise RuntimeError(f"{path} has {table.num_rows} rows; its stage task wrote {shard_rows}")
        mask = np.zeros(table.num_rows, bool)
        mask[rows] = True
        moved = table.filter(pa.array(mask))
        rejects = [{"id": i, "source": s, "reason": reason, "record": r}
                   for i, s, r in zip(moved["id"].to_pylist(), moved["source"].to_pylist(), rows_as_json(moved).to_pylist())]
        _write_by_rename(rejects_table(rejects, stage), Path(rejects_dir) / path.name.replace(".parquet", "-dup.parquet"))
        _write_by_rename(table.filter(pa.array(~mask)), path)


def _write_by_rename(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_table(table, tmp)
    os.replace(tmp, path)


def _rows_by_shard(repeats: pa.Table) -> dict[tuple[str, int, int], tuple[int, np.ndarray]]:
    """(group, unit, shard) -> (the shard's rows as written, the rows to move)."""
    groups = repeats["group"].to_pylist()
    units, shards, rows, shard_rows = (repeats[c].to_numpy() for c in ("unit", "shard", "row", "shard_rows"))
    order = np.lexsort((rows, shards, units))
    units, shards, rows, shard_rows = units[order], shards[order], rows[order], shard_rows[order]
    starts = np.flatnonzero(np.r_[True, (units[1:] != units[:-1]) | (shards[1:] != shards[:-1])])
    ends = np.r_[starts[1:], len(units)]
    return {(groups[order[a]], int(units[a]), int(shards[a])): (int(shard_rows[a]), rows[a:b]) for a, b in zip(starts, ends)}
