"""Connected components of an undirected graph given as an edge array, vectorised.

Hook-and-shortcut (the Shiloach–Vishkin idea): every edge hooks the larger of its two roots
under the smaller, then pointer jumping flattens the trees; repeat until no edge joins two
roots. Each round is a few numpy passes over the edges, and the rounds needed grow like
log(component diameter), so it handles millions of edges without a Python loop per edge.
"""

from __future__ import annotations

import numpy as np


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Label of each node 0..n-1: the smallest node index of its component."""
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
