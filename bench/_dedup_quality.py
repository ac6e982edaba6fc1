"""Ground truth for dedup benchmarks and tests: exact word 5-gram Jaccard, pair precision/recall.

Not part of the product: the stage never sees these numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from datatrove.utils.text import simplify_text


def words(text: str) -> list[str]:
    """The words the dedup threshold is defined on (operators/data/dedup.py's docstring): datatrove's own
    text simplification (FineWeb's, its default TextNormConfig) split on whitespace, imported rather than
    written again so that the stage's code does not define its own truth. (datatrove's MinHash then splits
    English with spaCy's tokenizer, which also cuts a few words such as "cannot" in two; not here.)"""
    return simplify_text(text).split()


def shingles(text: str, ngram_size: int = 5) -> frozenset:
    """Word n-grams of the normalized text (a text with fewer words: one n-gram of all of them)."""
    words_ = words(text)
    if len(words_) < ngram_size:
        return frozenset([tuple(words_)]) if words_ else frozenset()
    return frozenset(tuple(words_[i : i + ngram_size]) for i in range(len(words_) - ngram_size + 1))


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
