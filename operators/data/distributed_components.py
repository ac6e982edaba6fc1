"""Connected components over edges in hash-partitioned files, one Ray task per partition and step.

    edge files (batch r = directed edges (u, v) with hash(u) = r, both orientations present)
      │ round k: task r runs large-star (k even) or small-star (k odd) on batch r of every file
      │          of round k-1 and writes what it emits, both orientations, partitioned again
      ▼ until a large-star and the small-star after it change nothing (counts summed by the driver)
    label files (batch g = (node, label) of the nodes that fall in row range g)

The driver holds file names and per-task counts, never an edge. A task's memory is its
partition's edges (plus the neighbourhood of a node with more edges than that: one component's
hub is never split). See `connected_components.py` for the steps and why they converge.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from operators.data.connected_components import large_star, small_star, star_labels
from operators.data.partitioned_files import hash_partition, read_partition, write_partitioned

log = logging.getLogger(__name__)

EDGE_SCHEMA = pa.schema([pa.field("u", pa.int64(), nullable=False), pa.field("v", pa.int64(), nullable=False)])
LABEL_SCHEMA = pa.schema([pa.field("node", pa.int64(), nullable=False), pa.field("label", pa.int64(), nullable=False)])
EDGE_BYTES = 2 * 2 * 8  # both orientations of an edge, two int64 each
# Large-star / small-star needs O(log² n) steps; a graph still changing after this many is a bug.
MAX_STEPS = 400


@dataclass(frozen=True)
class ComponentsResult:
    label_files: list[Path]  # batch g of each: (node, label) of the nodes in row range g
    steps: int
    edges_per_step: list[int]  # undirected edges (with repeats) that each step emitted
    scratch_bytes: int  # bytes written to the scratch directory by all steps
    nodes: Counter = field(default_factory=Counter)  # Ray node id -> tasks it ran


def write_edges(path: Path, x: np.ndarray, y: np.ndarray, partitions: int) -> int:
    """Write undirected edges {x, y} as directed edges in both orientations, partitioned by their first node."""
    u, v = np.concatenate([x, y]).astype(np.int64), np.concatenate([y, x]).astype(np.int64)
    table = pa.table({"u": u, "v": v}, schema=EDGE_SCHEMA)
    return write_partitioned(path, table, hash_partition(u, partitions), partitions)


def label_components(edge_files: list[Path], partitions: int, row_bounds: np.ndarray,
                     work: Path) -> ComponentsResult:
    """Labels (smallest node of the component) of every node with an edge, written partitioned by
    the row ranges `row_bounds` (range g = [row_bounds[g], row_bounds[g+1]))."""
    files, step, unchanged_large, emitted, written, nodes = edge_files, 0, False, [], 0, Counter()
    bounds = ray.put(row_bounds)
    while True:
        kind = "large" if step % 2 == 0 else "small"
        out = [work / f"step{step:03d}" / f"p{r:05d}.arrow" for r in range(partitions)]
        results = ray.get([_star_step.remote(files, r, kind, partitions, str(out[r])) for r in range(partitions)])
        changed = sum(r["changed"] for r in results)
        emitted.append(sum(r["edges"] for r in results))
        written += sum(r["bytes"] for r in results)
        nodes.update(r["node"] for r in results)
        log.info("connected components step %d (%s-star): %d edges out, %d changes", step, kind, emitted[-1], changed)
        if step > 0:
            shutil.rmtree(files[0].parent, ignore_errors=True)  # the previous step's files are consumed
        files, step = out, step + 1
        if kind == "large":
            unchanged_large = changed == 0
        elif unchanged_large and changed == 0:
            break
        if step >= MAX_STEPS:
            raise RuntimeError(f"connected components did not converge in {MAX_STEPS} steps ({changed} changes left)")
    out = [work / "labels" / f"p{r:05d}.arrow" for r in range(partitions)]
    results = ray.get([_labels.remote(files, r, bounds, str(out[r])) for r in range(partitions)])
    shutil.rmtree(files[0].parent, ignore_errors=True)
    nodes.update(r["node"] for r in results)
    return ComponentsResult(out, step, emitted, written + sum(r["bytes"] for r in results), nodes)


@ray.remote(num_cpus=1)
def _star_step(files: list[Path], r: int, kind: str, partitions: int, out: str) -> dict:
    edges = read_partition(files, r, EDGE_SCHEMA)
    step = large_star if kind == "large" else small_star
    x, m, changed = step(edges.column("u").to_numpy(), edges.column("v").to_numpy())
    written = write_edges(Path(out), x, m, partitions)
    return {"changed": changed, "edges": len(x), "bytes": written, "node": ray.get_runtime_context().get_node_id()}


@ray.remote(num_cpus=1)
def _labels(files: list[Path], r: int, row_bounds: np.ndarray, out: str) -> dict:
    edges = read_partition(files, r, EDGE_SCHEMA)
    node, label = star_labels(edges.column("u").to_numpy(), edges.column("v").to_numpy())
    group = np.searchsorted(row_bounds, node, side="right") - 1
    table = pa.table({"node": node, "label": label}, schema=LABEL_SCHEMA)
    written = write_partitioned(Path(out), table, group, len(row_bounds) - 1)
    return {"bytes": written, "node": ray.get_runtime_context().get_node_id()}
