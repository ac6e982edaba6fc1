"""Connected components of an undirected graph given as edges: in memory, and as the two steps
of large-star / small-star (Kiveris et al., "Connected Components in MapReduce and Beyond",
SoCC 2014) that run partition by partition.

Nodes are integers; a component's label is its smallest node. Both steps see one node's whole
neighbourhood at a time, so edges hash-partitioned by their first node can be processed
partition by partition with no other state:

    large-star(u): m = min(u, Γ(u)); every neighbour v > u is re-attached to m
    small-star(u): m = min(u, {v ∈ Γ(u): v < u}); u and its smaller neighbours are attached to m

Alternating them never adds edges and ends in O(log² n) rounds (in practice O(log n), also on
long chains) with every component a star around its smallest node. A large-star step that
changes nothing followed by a small-star step that changes nothing is that fixed point.
"""

from __future__ import annotations

import numpy as np

from operators.data.lsh_buckets import unique_pairs


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Label of each node 0..n-1: the smallest node index of its component (in memory).

    Hook-and-shortcut (the Shiloach–Vishkin idea): every edge hooks the larger of its two roots
    under the smaller, then pointer jumping flattens the trees; repeat until no edge joins two roots.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return labels
    u, v = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    while True:
        lu, lv = labels[u], labels[v]
        crossing = lu != lv
        if not crossing.any():
            return labels
        lu, lv = lu[crossing], lv[crossing]
        low = np.minimum(lu, lv)
        np.minimum.at(labels, np.maximum(lu, lv), low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def _neighbourhoods(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed edges (u, v) deduplicated and sorted by (u, v), and for each the smallest neighbour of its u."""
    edges = unique_pairs(u, v)
    u, v = edges[:, 0], edges[:, 1]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    first_v = np.repeat(v[starts], np.diff(np.r_[starts, len(u)]))
    return u, v, first_v


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One large-star step over the directed edges (u, v) of some nodes u (both orientations of
    every undirected edge are present, each under its own first node).

    Returns the undirected edges it emits as (x, m) with m < x, and how many edges it changed.
    """
    u, v, smallest = _neighbourhoods(u, v)
    m = np.minimum(u, smallest)
    larger = v > u
    return v[larger], m[larger], int(np.count_nonzero(larger & (m < u)))


def small_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One small-star step over the directed edges (u, v) (see `large_star`).

    Returns the emitted undirected edges as (x, m) with m < x, and how many nodes changed
    (those with two or more smaller neighbours).
    """
    u, v, _ = _neighbourhoods(u, v)
    smaller = v < u
    u, v = u[smaller], v[smaller]
    if len(u) == 0:
        return u, v, 0
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    m = np.repeat(v[starts], counts)  # sorted by v within u: the first is the smallest
    others = v != m
    x = np.concatenate([u[starts], v[others]])
    return x, np.concatenate([v[starts], m[others]]), int(np.count_nonzero(counts >= 2))


def star_labels(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node, label) for every node u of a converged graph's directed edges (u, v): a leaf's one
    neighbour is its component's smallest node; a centre is that node itself."""
    u, _, smallest = _neighbourhoods(u, v)
    first = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    return u[first], np.minimum(u, smallest)[first]


def star_components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(node, label) of every node that has an edge, by alternating the two steps in memory, and
    the number of steps taken: the reference for the partitioned run."""
    x, m = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    steps, unchanged_large = 0, False
    while True:
        step = large_star if steps % 2 == 0 else small_star
        x, m, changed = step(np.concatenate([x, m]), np.concatenate([m, x]))
        steps += 1
        if step is large_star:
            unchanged_large = changed == 0
        elif unchanged_large and changed == 0:
            return *star_labels(np.concatenate([x, m]), np.concatenate([m, x])), steps
