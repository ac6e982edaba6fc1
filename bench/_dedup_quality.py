"""Ground truth for dedup benchmarks and tests: exact word 5-gram Jaccard, pair precision/recall.

Not part of the product: the stage never sees these numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations


def shingles(text: str, ngram_size: int = 5) -> frozenset:
    """Word n-grams of the lowercased, whitespace-split text: a definition independent of the
    stage's own normalization, so neither system under test defines its own truth."""
    words = text.lower().split()
    if len(words) < ngram_size:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def cluster_pairs(members: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """All unordered pairs of documents sharing a cluster, from (document id, cluster id) rows."""
    clusters: dict[str, list[str]] = {}
    for doc, cluster in members:
        clusters.setdefault(cluster, []).append(doc)
    return pairs_of_groups(clusters.values())


def precision_recall(found: set[tuple[str, str]], true: set[tuple[str, str]], is_true_pair) -> dict:
    """Pair precision (found pairs that are true duplicates) and recall (true pairs found).

    `is_true_pair(a, b)` judges a found pair that is not in `true` (e.g. two different pages
    that happen to have Jaccard >= 0.8): such a pair is a correct find, and joins the truth.
    """
    correct = {p for p in found if p in true or is_true_pair(*p)}
    truth = true | correct
    return {
        "found_pairs": len(found),
        "true_pairs": len(truth),
        "precision": len(correct) / len(found) if found else 1.0,
        "recall": len(found & truth) / len(truth) if truth else 1.0,
    }


def pairs_of_groups(groups: Iterable[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in combinations(g, 2)}
