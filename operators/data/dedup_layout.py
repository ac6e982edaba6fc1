"""How the dedup stage splits its input into map tasks and its intermediate data into partitions.

The driver plans from Parquet metadata alone (row and byte counts per row group): a *piece* is
one row group of an input shard; a *map group* is a run of consecutive pieces read by one task.
Rows are numbered in input order (piece by piece), so a map group is also a row range, and
anything keyed by row (labels, decisions) is partitioned by map group with `row_bounds`.
Everything the driver keeps is O(pieces); partition counts follow the data size so that each
partition holds about `partition_bytes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray

from operators.data.partitioned_files import partition_count
from operators.formats.damaged import decoding

# Bytes per row of each intermediate table (a little above the raw column widths), for sizing.
EXACT_ROW_BYTES = 24  # hi, lo, row
BAND_ROW_BYTES = 26  # band, key, tag, row: one per document and band
EDGE_ROW_BYTES = 32  # one undirected edge, both orientations
KEY_ROW_BYTES = 96  # label, row, length, hashes, source and id strings


@dataclass(frozen=True)
class Piece:
    """One row group of an input shard; `index` numbers the output shards it becomes."""

    path: str
    row_group: int
    index: int
    first_row: int
    rows: int


@dataclass(frozen=True)
class MapGroup:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def first_row(self) -> int:
        return self.pieces[0].first_row

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


@dataclass(frozen=True)
class Layout:
    """Partition counts and the scratch folder; `files(phase, n)` names a phase's n files."""

    scratch: Path
    groups: int
    exact_partitions: int
    band_partitions: int
    edge_partitions: int
    key_partitions: int

    def files(self, phase: str, count: int) -> list[Path]:
        return [self.scratch / phase / f"p{i:05d}.arrow" for i in range(count)]


def plan(shards: list[Path], scratch: Path, bands: int, partition_bytes: int,
         min_groups: int) -> tuple[list[MapGroup], Layout]:
    """Map groups of at most `partition_bytes` of text (but at least `min_groups` of them when
    there are enough pieces, to keep every CPU busy) and the partition counts for this input."""
    pieces, sizes, row = [], [], 0
    for path in shards:
        with decoding(path):
            meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            pieces.append(Piece(str(path), g, len(pieces), row, rows))
            sizes.append(meta.row_group(g).total_byte_size)
            row += rows
    target = min(partition_bytes, max(1, math.ceil(sum(sizes) / max(1, min_groups))))
    groups, current, size = [], [], 0
    for piece, piece_size in zip(pieces, sizes):
        if current and size + piece_size > target:
            groups.append(MapGroup(len(groups), tuple(current)))
            current, size = [], 0
        current.append(piece)
        size += piece_size
    if current:
        groups.append(MapGroup(len(groups), tuple(current)))
    layout = Layout(
        scratch=scratch,
        groups=len(groups),
        exact_partitions=partition_count(row, EXACT_ROW_BYTES, partition_bytes),
        band_partitions=partition_count(row * bands, BAND_ROW_BYTES, partition_bytes),
        # Sized for the worst case, every document in some duplicate pair: known before any edge exists.
        edge_partitions=partition_count(row, EDGE_ROW_BYTES, partition_bytes),
        key_partitions=partition_count(row, KEY_ROW_BYTES, partition_bytes),
    )
    return groups, layout


def row_bounds(groups: list[MapGroup]) -> np.ndarray:
    """First row of each map group, then the total: group g holds rows [bounds[g], bounds[g+1])."""
    return np.array([g.first_row for g in groups] + [sum(g.rows for g in groups)], dtype=np.int64)


def group_of(rows: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The map group holding each row."""
    return np.searchsorted(bounds, rows, side="right") - 1


def task_node() -> str:
    """The Ray node running the calling task: every dedup task returns it, and the stage's summary
    counts the tasks each node ran."""
    return ray.get_runtime_context().get_node_id()
