"""Dedup, the edges of the duplicate graph: exact groups, LSH buckets and verified candidate pairs.

    exact partition r ──sort by hash──▶ each copy joined to its group's first row   ─┐
    band partition r ──buckets (lsh_buckets)──▶ candidate pairs (a, b), a < b        │
        │ sent to the map groups of a and of b                                         ├─▶ edge files
        ▼                                                                              │   (both orientations,
    map group g: its candidates' shingle sets, from the sketch's sets/ file           │    partitioned by node)
        │ b-side sets travel to a's group with their pair                              │
        ▼                                                                              │
    map group g: exact Jaccard of each pair whose a is here >= threshold ─────────────┘

Verification compares the two documents' sets of 32-bit shingle hashes — the sets their
signatures estimate — so a pair at the threshold is judged exactly, not by a 112-value estimate
(whose standard deviation is ~0.04 at J = 0.8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from operators.data import minhash
from operators.data.dedup_layout import Layout, group_of, task_node
from operators.data.dedup_sketch import BANDS_SCHEMA, EXACT_SCHEMA, SETS_SCHEMA
from operators.data.distributed_components import write_edges
from operators.data.lsh_buckets import bucket_candidates, unique_pairs
from operators.data.partitioned_files import read_partition, write_partitioned, write_single

# side = 0: the pair was sent to the map group of a; 1: to the map group of b.
PAIRS_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("side", pa.uint8())])
B_SETS_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("shingles", pa.large_list(pa.uint32()))])
# Shingle values held at once while intersecting a chunk of pairs (~128 MB of uint64 keys).
_CHUNK_VALUES = 16_000_000


@ray.remote(num_cpus=1)
def exact_edges(r: int, layout: Layout) -> dict:
    """Edges joining every copy of a text to the text's first row, for exact partition r."""
    table = read_partition(layout.files("exact", layout.groups), r, EXACT_SCHEMA)
    hi, lo, row = (table.column(c).to_numpy() for c in ("hi", "lo", "row"))
    order = np.lexsort((row, lo, hi))
    hi, lo, row = hi[order], lo[order], row[order]
    same = np.r_[False, (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])]
    first = row[np.maximum.accumulate(np.where(same, 0, np.arange(len(row))))]
    out = layout.files("exact_edges", layout.exact_partitions)[r]
    written = write_edges(out, first[same], row[same], layout.edge_partitions)
    return {"edges": int(same.sum()), "bytes": written, "node": task_node()}


@ray.remote(num_cpus=1)
def bucket_pairs(r: int, layout: Layout, bounds: np.ndarray, verify: bool) -> dict:
    """Candidate pairs of band partition r: to the map groups of both ends (verify), else straight to edges."""
    table = read_partition(layout.files("bands", layout.groups), r, BANDS_SCHEMA)
    pairs = bucket_candidates(*(table.column(c).to_numpy() for c in ("band", "key", "tag", "row")))
    a, b = pairs[:, 0], pairs[:, 1]
    if not verify:
        out = layout.files("lsh_edges", layout.band_partitions)[r]
        return {"pairs": len(a), "bytes": write_edges(out, a, b, layout.edge_partitions), "node": task_node()}
    both = pa.table(
        {"a": np.r_[a, a], "b": np.r_[b, b], "side": np.r_[np.zeros(len(a), np.uint8), np.ones(len(a), np.uint8)]},
        schema=PAIRS_SCHEMA,
    )
    groups = np.r_[group_of(a, bounds), group_of(b, bounds)]
    written = write_partitioned(layout.files("pairs", layout.band_partitions)[r], both, groups, layout.groups)
    return {"pairs": len(a), "bytes": written, "node": task_node()}


@ray.remote(num_cpus=1)
def export_shingles(g: int, layout: Layout, bounds: np.ndarray) -> dict:
    """Shingle sets of group g's candidates: b-side sets sent to their a's group, a-side sets kept."""
    pairs = read_partition(layout.files("pairs", layout.band_partitions), g, PAIRS_SCHEMA)
    side = pairs.column("side").to_numpy()
    a, b = pairs.column("a").to_numpy(), pairs.column("b").to_numpy()
    b_side = unique_pairs(a[side == 1], b[side == 1])  # a pair comes from every band partition that found it
    a_rows = minhash.distinct(a[side == 0])
    sets = read_partition([layout.files("sets", layout.groups)[g]], 0, SETS_SCHEMA)
    rows, shingles = sets.column("row").to_numpy(), sets.column("shingles")
    b_table = pa.table({"a": b_side[:, 0], "b": b_side[:, 1],
                        "shingles": shingles.take(pa.array(np.searchsorted(rows, b_side[:, 1])))}, schema=B_SETS_SCHEMA)
    written = write_partitioned(layout.files("b_sets", layout.groups)[g], b_table, group_of(b_side[:, 0], bounds),
                                layout.groups)
    a_table = pa.table({"row": a_rows, "shingles": shingles.take(pa.array(np.searchsorted(rows, a_rows)))},
                       schema=SETS_SCHEMA)
    written += write_single(layout.files("a_sets", layout.groups)[g], a_table)
    return {"candidates": len(b_side), "bytes": written, "node": task_node()}


@ray.remote(num_cpus=1)
def verify_pairs(g: int, layout: Layout, threshold: float) -> dict:
    """Edges for the candidate pairs whose a is in group g and whose exact Jaccard reaches the threshold."""
    pairs = read_partition(layout.files("b_sets", layout.groups), g, B_SETS_SCHEMA)
    a_sets = read_partition([layout.files("a_sets", layout.groups)[g]], 0, SETS_SCHEMA)
    a, b = pairs.column("a").to_numpy(), pairs.column("b").to_numpy()
    b_values, b_offsets = _list_parts(pairs.column("shingles").combine_chunks())
    a_values, a_offsets = _list_parts(a_sets.column("shingles").combine_chunks())
    which_a = np.searchsorted(a_sets.column("row").to_numpy(), a)
    similarity = jaccard_of_pairs(a_values, a_offsets, which_a, b_values, b_offsets)
    keep = similarity >= threshold
    out = layout.files("verified_edges", layout.groups)[g]
    return {"verified": int(keep.sum()), "bytes": write_edges(out, a[keep], b[keep], layout.edge_partitions),
            "node": task_node()}


def jaccard_of_pairs(a_values: np.ndarray, a_offsets: np.ndarray, which_a: np.ndarray,
                     b_values: np.ndarray, b_offsets: np.ndarray) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| for pair p = (set which_a[p] of the A sets, set p of the B sets); every set
    is sorted and distinct (`minhash.shingle_sets`)."""
    n = len(which_a)
    out = np.zeros(n, dtype=np.float64)
    a_len = a_offsets[which_a + 1] - a_offsets[which_a]
    b_len = np.diff(b_offsets)
    start = 0
    while start < n:
        sizes = np.cumsum(a_len[start:] + b_len[start:])
        stop = start + max(1, int(np.searchsorted(sizes, _CHUNK_VALUES, side="right")))
        p = np.arange(start, stop)
        keys_a = _pair_keys(p - start, a_values, a_offsets[which_a[p]], a_len[p])
        keys_b = _pair_keys(p - start, b_values, b_offsets[p], b_len[p])
        at = np.minimum(np.searchsorted(keys_b, keys_a), max(len(keys_b) - 1, 0))
        hit = keys_b[at] == keys_a if len(keys_b) else np.zeros(len(keys_a), bool)
        inter = np.bincount((keys_a[hit] >> np.uint64(32)).astype(np.int64), minlength=len(p))
        union = a_len[p] + b_len[p] - inter
        out[p] = inter / np.maximum(union, 1)
        start = stop
    return out


def _pair_keys(pair: np.ndarray, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(pair << 32 | value) for the values of each pair's set: sorted, since pairs ascend and sets are sorted."""
    positions = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
    return (np.repeat(pair.astype(np.uint64), lengths) << np.uint64(32)) | values[positions].astype(np.uint64)


def _list_parts(lists: pa.LargeListArray) -> tuple[np.ndarray, np.ndarray]:
    """Values and offsets (starting at 0) of a list array, as numpy."""
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.to_numpy()[offsets[0] : offsets[-1]] if len(lists) else np.zeros(0, np.uint32)
    return values, offsets - offsets[0]


def edge_files(layout: Layout, exact: bool, fuzzy: bool, verify: bool) -> list[Path]:
    """The files holding the duplicate graph's edges, for the connected components."""
    files = layout.files("exact_edges", layout.exact_partitions) if exact else []
    if fuzzy and verify:
        files += layout.files("verified_edges", layout.groups)
    elif fuzzy:
        files += layout.files("lsh_edges", layout.band_partitions)
    return files
