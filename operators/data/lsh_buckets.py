"""MinHash-LSH banding: signatures → candidate duplicate pairs, from bucket records of any partition.

This is datasketch's `MinHashLSH` bucket rule — two documents are candidates when all `rows`
hash values of some band are equal, bands being the consecutive slices
`hashranges = [(i*r, (i+1)*r) ...]` — and its parameter choice for a threshold, but evaluated
by sorting bucket records instead of inserting documents into a Python dict one by one
(MinHashLSH.insert measured ~130 µs per document here, more than the whole stage budget).
Tests check both against datasketch's public API (`MinHashLSH.query`, `MinHashLSH(...).b/.r`),
so a change of datasketch's behaviour fails them.

A band's r values are folded into one 64-bit key; a bucket is a (band, key) pair. Because a
bucket is identified by its key alone, the records of one band can be hash-partitioned by key
and each partition bucketed on its own: no task ever needs all signatures.
"""

from __future__ import annotations

import numpy as np

_POLY = np.uint64(0x9E3779B97F4A7C15)
# Buckets up to this size pair all their members (at most 496 pairs); larger ones form a star.
SMALL_BUCKET = 32
# Composite Gauss-Legendre: 256 sub-intervals x 8 nodes integrates the S-curve to ~1e-12, as
# datasketch's scipy.quad does, without depending on scipy.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(8)
_PIECES = 256


def _s_curve_integrals(threshold: float, bands: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """∫₀ᵗ P(candidate | s) ds and ∫ₜ¹ P(not candidate | s) ds for each (bands, rows), P = 1-(1-sʳ)ᵇ."""

    def integral(lo: float, hi: float, complement: bool) -> np.ndarray:
        edges = np.linspace(lo, hi, _PIECES + 1)
        half = (edges[1:] - edges[:-1])[:, None] / 2
        s = ((edges[1:] + edges[:-1])[:, None] / 2 + half * _NODES).reshape(-1)
        p = 1 - (1 - s[None, :] ** rows[:, None].astype(float)) ** bands[:, None].astype(float)
        values = (1 - p if complement else p).reshape(len(bands), _PIECES, -1)
        return (values * _WEIGHTS * half[None]).sum(axis=(1, 2))

    return integral(0.0, threshold, False), integral(threshold, 1.0, True)


def optimal_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's choice of (bands, rows) for a Jaccard threshold: least FP + FN area, equal weights."""
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])
    fp, fn = _s_curve_integrals(threshold, pairs[:, 0], pairs[:, 1])
    b, r = pairs[int(np.argmin(0.5 * fp + 0.5 * fn))]
    return int(b), int(r)


def error_rates(threshold: float, bands: int, rows: int) -> dict[str, float]:
    """Integrated false positive / negative probability of the S-curve around `threshold`."""
    fp, fn = _s_curve_integrals(threshold, np.array([bands]), np.array([rows]))
    return {"false_positive_area": float(fp[0]), "false_negative_area": float(fn[0])}


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 key per document for band `band` (its hash values at [band*rows, (band+1)*rows))."""
    cols = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.zeros(len(signatures), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            key = key * _POLY + cols[:, j] + np.uint64(1)
    return key


def bucket_candidates(band: np.ndarray, key: np.ndarray, tag: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Candidate pairs (a, b), a < b, unique, from bucket records (band, key, tag, row).

    Records with the same tag in one bucket are copies of one text (the caller tags by exact-text
    hash): only the smallest row of each tag takes part. In a bucket of up to SMALL_BUCKET members
    every pair is a candidate, as LSH defines it; a larger bucket (a template repeated thousands
    of times) pairs every member with its smallest row only (a star: the same connected
    components with O(size) pairs instead of O(size²), but a pair the star's centre is not
    similar to is then judged only if another band finds it).
    """
    if len(row) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((row, tag, key, band))
    band, key, tag, row = band[order], key[order], tag[order], row[order]
    first_of_tag = np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1]) | (tag[1:] != tag[:-1])]
    band, key, row = band[first_of_tag], key[first_of_tag], row[first_of_tag]
    order = np.lexsort((row, key, band))
    band, key, row = band[order], key[order], row[order]
    starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1])])
    sizes = np.diff(np.r_[starts, len(row)])
    bucket = np.repeat(np.arange(len(starts)), sizes)
    small = np.repeat(sizes <= SMALL_BUCKET, sizes)
    a, b = [], []
    for d in range(1, min(SMALL_BUCKET, int(sizes.max()))):  # all pairs d apart inside a small bucket
        same = small[:-d] & (bucket[:-d] == bucket[d:])
        a.append(row[:-d][same])
        b.append(row[d:][same])
    large = ~small & (np.arange(len(row)) != np.repeat(starts, sizes))
    a.append(np.repeat(row[starts], sizes)[large])
    b.append(row[large])
    return unique_pairs(np.concatenate(a), np.concatenate(b))


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The distinct (a, b) rows, sorted by a then b, as an (n, 2) int64 array."""
    if len(a) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    new = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]
    return np.stack([a[new], b[new]], axis=1).astype(np.int64)


def candidate_pairs(signatures: np.ndarray, bands: range, rows: int) -> np.ndarray:
    """Unique (i, j), i < j, of rows of `signatures` sharing a bucket in any of `bands` (all in memory)."""
    n = len(signatures)
    keys = [band_keys(signatures, band, rows) for band in bands]
    if not keys:
        return np.zeros((0, 2), dtype=np.int64)
    index = np.arange(n, dtype=np.int64)
    return bucket_candidates(
        np.repeat(np.array(list(bands), dtype=np.int64), n), np.concatenate(keys), np.tile(index, len(keys)),
        np.tile(index, len(keys)),
    )
