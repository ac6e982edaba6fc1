"""Dedup, reduce side: one survivor per component, then the stage's outputs.

    labels of map group g + its meta file ──▶ keep-rule keys, partitioned by component label
    key partition r: sort (label, preferred source, longest or first, source, id, row);
        the first of each label survives ──▶ decisions (removed rows) by map group,
                                             cluster rows by cluster-id range
    map group g: its pieces minus the removed rows ──▶ documents/, the removed ──▶ rejects/
    one task: cluster-id ranges in order ──▶ clusters.parquet, sorted, written as a stream

The order inside a component is total (it ends with the row number), so the survivor never
depends on how the work was split. Only documents that have an edge ever reach these tasks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash

from operators.data.dedup_layout import Layout, MapGroup, Piece, group_of, task_node
from operators.data.dedup_sketch import META_SCHEMA
from operators.data.distributed_components import LABEL_SCHEMA
from operators.data.json_records import rows_as_json
from operators.data.partitioned_files import hash_partition, read_partition, write_partitioned
from operators.formats.damaged import decoding
from operators.formats.documents import CLUSTERS_SCHEMA, DOCUMENTS_SCHEMA, REJECTS_SCHEMA, unit_shard_name, write_table

KEYS_SCHEMA = pa.schema(
    [("label", pa.int64()), ("row", pa.int64()), ("length", pa.int64()), ("source", pa.string()),
     ("id", pa.string()), ("hi", pa.uint64()), ("lo", pa.uint64())]
)
DECISIONS_SCHEMA = pa.schema([("row", pa.int64()), ("reason", pa.string()), ("duplicate_of", pa.string())])
# clusters.parquet row groups: ~4 MB at ~60 bytes a row.
CLUSTER_ROWS_PER_GROUP = 65_536


@ray.remote(num_cpus=1)
def attach_keys(group: MapGroup, layout: Layout, label_files: list[Path]) -> dict:
    """The keep-rule keys of this group's graph nodes, sent to the partition of their component."""
    labels = read_partition(label_files, group.index, LABEL_SCHEMA)
    meta = read_partition([layout.files("meta", layout.groups)[group.index]], 0, META_SCHEMA)
    node = labels.column("node").to_numpy()
    members = meta.take(pa.array(node - group.first_row))
    label = labels.column("label").to_numpy()
    table = pa.table(
        {"label": label, **{c: members.column(c) for c in ("row", "length", "source", "id", "hi", "lo")}},
        schema=KEYS_SCHEMA,
    )
    parts = hash_partition(label, layout.key_partitions)
    written = write_partitioned(layout.files("keys", layout.groups)[group.index], table, parts, layout.key_partitions)
    return {"bytes": written, "node": task_node()}


@ray.remote(num_cpus=1)
def choose_survivors(r: int, layout: Layout, bounds: np.ndarray, keep: str, source_priority: list[str],
                     exact: bool) -> dict:
    """Survivor of every component in key partition r: decisions for the removed, rows for clusters.parquet."""
    table = read_partition(layout.files("keys", layout.groups), r, KEYS_SCHEMA)
    priority = pc.fill_null(pc.index_in(table.column("source"), value_set=pa.array(source_priority, pa.string())),
                            len(source_priority))
    rule = pc.negate(table.column("length")) if keep == "longest" else table.column("row")
    ranked = table.append_column("priority", priority).append_column("rule", rule)
    keys = ("label", "priority", "rule", "source", "id", "row")
    order = pc.sort_indices(ranked, sort_keys=[(c, "ascending") for c in keys])
    t = table.take(order)
    label, row, hi, lo = (t.column(c).to_numpy() for c in ("label", "row", "hi", "lo"))
    first = np.r_[True, label[1:] != label[:-1]] if len(label) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(label)), 0))
    removed = ~first
    same_text = exact & (hi == hi[start]) & (lo == lo[start])
    reason = np.where(same_text, "exact_duplicate", "near_duplicate")[removed]
    survivor_ids = t.column("id").take(pa.array(start))
    decisions = pa.table({"row": row[removed], "reason": pa.array(reason, pa.string()),
                          "duplicate_of": survivor_ids.filter(pa.array(removed))}, schema=DECISIONS_SCHEMA)
    written = write_partitioned(layout.files("decisions", layout.key_partitions)[r], decisions,
                                group_of(row[removed], bounds), layout.groups)

    heads = np.flatnonzero(first)
    sizes = np.diff(np.r_[heads, len(label)])
    clusters, ranges = _cluster_rows(t, heads, sizes, layout.key_partitions)
    written += write_partitioned(layout.files("cluster_rows", layout.key_partitions)[r], clusters, ranges,
                                 layout.key_partitions)
    return {"sizes": Counter(sizes.tolist()), "bytes": written, "node": task_node()}


def _cluster_rows(members: pa.Table, heads: np.ndarray, sizes: np.ndarray,
                  ranges: int) -> tuple[pa.Table, np.ndarray]:
    """clusters.parquet rows of components sorted by label, survivor first (`heads` are the
    survivors' positions), and each row's range of the cluster id; a cluster is named after its
    survivor, hashed so that it is unique across sources, and the ranges of that hash are in order."""
    sources = members.column("source").take(pa.array(heads)).to_pylist()
    ids = members.column("id").take(pa.array(heads)).to_pylist()
    hashes = np.array([xxhash.xxh3_64_intdigest(f"{s}\x00{i}".encode()) for s, i in zip(sources, ids)], np.uint64)
    names = np.array([f"{h:016x}" for h in hashes.tolist()], dtype=object)
    kept = np.zeros(len(members), dtype=bool)
    kept[heads] = True
    table = pa.table({"id": members.column("id"), "source": members.column("source"),
                      "cluster_id": pa.array(np.repeat(names, sizes), pa.string()), "kept": kept},
                     schema=CLUSTERS_SCHEMA)
    top = np.repeat(hashes, sizes) >> np.uint64(32)
    return table, ((top * np.uint64(ranges)) >> np.uint64(32)).astype(np.int64)


@ray.remote(num_cpus=1)
def write_group(group: MapGroup, layout: Layout, out: str, stage: str) -> dict:
    """Every piece of this group minus its removed rows to documents/, the removed rows to rejects/."""
    decisions = read_partition(layout.files("decisions", layout.key_partitions), group.index, DECISIONS_SCHEMA)
    decisions = decisions.sort_by("row")
    rows = decisions.column("row").to_numpy()
    kept, rejected = 0, Counter()
    for piece in group.pieces:
        lo, hi = np.searchsorted(rows, [piece.first_row, piece.first_row + piece.rows])
        mine = decisions.slice(lo, hi - lo)
        kept += _write_piece(piece, rows[lo:hi] - piece.first_row, mine, Path(out), stage)
        rejected.update(mine.column("reason").to_pylist())
    return {"kept": kept, "rejected": rejected, "node": task_node()}


def _write_piece(piece: Piece, removed: np.ndarray, decisions: pa.Table, out: Path, stage: str) -> int:
    """Survivors of a piece to documents/, its removed rows to rejects/ with their duplicate_of; rows kept."""
    name = unit_shard_name(piece.index, 0)
    with decoding(piece.path):
        table = pq.ParquetFile(piece.path).read_row_group(piece.row_group).cast(DOCUMENTS_SCHEMA)
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[removed] = True
    kept = write_table(table.filter(pa.array(~mask)), out / "documents" / name)
    if not len(removed):
        return kept
    gone = table.take(pa.array(removed))
    rejects = pa.table(
        {"id": gone.column("id"), "source": gone.column("source"), "stage": pa.array([stage] * len(removed)),
         "reason": decisions.column("reason"), "record": rows_as_json(gone),
         "duplicate_of": decisions.column("duplicate_of")},
        schema=REJECTS_SCHEMA,
    )
    write_table(rejects, out / "rejects" / name)
    return kept


@ray.remote(num_cpus=1)
def write_clusters(layout: Layout, path: str) -> dict:
    """clusters.parquet: the cluster-id ranges one after another, each sorted (cluster, kept first, source,
    id), in row groups of a fixed size, so the file's bytes do not depend on the partitioning."""
    files = layout.files("cluster_rows", layout.key_partitions)
    rows, pending = 0, CLUSTERS_SCHEMA.empty_table()
    with pq.ParquetWriter(path, CLUSTERS_SCHEMA, compression="zstd", compression_level=1) as writer:
        for c in range(layout.key_partitions):
            table = read_partition(files, c, CLUSTERS_SCHEMA).sort_by(
                [("cluster_id", "ascending"), ("kept", "descending"), ("source", "ascending"), ("id", "ascending")]
            )
            rows += table.num_rows
            pending = pa.concat_tables([pending, table])
            full = pending.num_rows - pending.num_rows % CLUSTER_ROWS_PER_GROUP
            if full:
                writer.write_table(pending.slice(0, full), row_group_size=CLUSTER_ROWS_PER_GROUP)
                pending = pending.slice(full)
        if pending.num_rows:
            writer.write_table(pending, row_group_size=CLUSTER_ROWS_PER_GROUP)
    return {"rows": rows, "node": task_node()}
