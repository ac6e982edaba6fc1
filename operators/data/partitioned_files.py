"""Hash-partitioned intermediate files: the shuffle under the distributed dedup.

A map task writes ONE Arrow IPC file holding one record batch per partition (batch r = its rows
of partition r, in the order it produced them, possibly empty); reduce task r reads batch r of
every map file. Files stay O(map tasks), not O(map tasks x partitions), and a reducer reads only
its own byte ranges (the IPC footer indexes the batches; local files are memory-mapped).

    map task m ──▶ <phase>/m00007.arrow = [batch 0 | batch 1 | ... | batch R-1]
    reduce task r ──▶ batch r of every <phase>/m*.arrow

Files are written under a temporary name and renamed, so a map task that dies mid-write leaves
nothing a reducer could read, and its retry (Ray re-runs tasks lost with a worker or a node)
replaces the file with identical bytes. Everything lives in the stage's scratch directory in
the store, so a lost worker costs its tasks, not the stage.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

# Partitions are never more than this, whatever the data size asks for: a bound on file footers
# and on the number of reduce tasks a misconfigured partition size could create.
MAX_PARTITIONS = 4096

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)


def partition_count(rows: int, bytes_per_row: int, partition_bytes: int) -> int:
    """Partitions needed so that each holds about `partition_bytes` (at least 1, at most MAX_PARTITIONS)."""
    return max(1, min(MAX_PARTITIONS, math.ceil(rows * bytes_per_row / partition_bytes)))


def hash_partition(keys: np.ndarray, n: int) -> np.ndarray:
    """Partition (0..n-1) of each integer key: murmur3's 64-bit finalizer, so that neighbouring keys
    (consecutive row numbers) spread evenly."""
    h = keys.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(33))) * _M1
        h = (h ^ (h >> np.uint64(33))) * _M2
        h ^= h >> np.uint64(33)
    return (h % np.uint64(n)).astype(np.int64)


def write_partitioned(path: Path, table: pa.Table, partition: np.ndarray, n: int) -> int:
    """Write `table` as one IPC file of `n` batches, batch r holding the rows whose partition is r
    (their order kept); returns the bytes written."""
    order = np.argsort(partition, kind="stable")
    bounds = np.searchsorted(partition[order], np.arange(n + 1), side="left")
    batch = _one_batch(table.take(pa.array(order, pa.int64())))
    return _write_batches(path, table.schema, [batch.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])])


def write_single(path: Path, table: pa.Table) -> int:
    """Write `table` as a one-batch IPC file (read back with `read_partition(paths, 0)`)."""
    return _write_batches(path, table.schema, [_one_batch(table)])


def read_partition(paths: Sequence[Path], r: int, schema: pa.Schema) -> pa.Table:
    """Batch r of every file in `paths` (files that do not exist are a bug: they raise)."""
    batches = []
    for path in paths:
        with pa.memory_map(str(path)) as source:
            batches.append(pa.ipc.open_file(source).get_batch(r))
    return pa.Table.from_batches(batches, schema=schema).combine_chunks() if batches else schema.empty_table()


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]


def _write_batches(path: Path, schema: pa.Schema, batches: list[pa.RecordBatch]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return size
