"""The pieces under dedup: batch MinHash, LSH banding and connected components (no Ray needed)."""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import pyarrow as pa
from datasketch import MinHashLSH

from operators.data import minhash
from operators.data.connected_components import connected_components
from operators.data.json_records import rows_as_json
from operators.data.lsh_buckets import candidate_pairs

TEXTS = [
    argparse.__doc__,
    collections.__doc__,
    json.__doc__,
    json.__doc__.replace("JSON", "Json", 3),
    "short text",
    "",
    "Hello, World!  hello world",
]


def test_batch_signatures_equal_datasketch_minhash_document_by_document():
    sig, has_words = minhash.signatures(pa.array(TEXTS), 5, minhash.permutations(64, seed=7))

    for text, row in zip(TEXTS, sig):
        if text:
            assert np.array_equal(row, minhash.datasketch_minhash(text, 5, 64, seed=7).hashvalues)
    assert has_words.tolist() == [True, True, True, True, True, False, True]


def test_normalization_ignores_case_spacing_and_edge_punctuation():
    words = minhash.normalized_words(pa.array(["Hello, World!  hello\n(world) --", "don't stop: os.path"]))

    assert words == [["hello", "world", "hello", "world"], ["don't", "stop", "os.path"]]


def test_candidate_pairs_join_the_same_documents_as_datasketch_lsh():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=(40, 32), dtype=np.uint64).astype(np.uint32)
    sigs = np.concatenate([base, base[:20].copy()])
    sigs[40:, rng.integers(0, 32, size=20)] += 1  # each copy differs from its original in some bands
    lsh = MinHashLSH(num_perm=32, params=(8, 4))
    for i, row in enumerate(sigs):
        lsh.insert(i, _lean(row))
    expected = {tuple(sorted((i, j))) for i, row in enumerate(sigs) for j in lsh.query(_lean(row)) if i != j}

    ours = candidate_pairs(sigs, range(8), 4)

    assert _components(len(sigs), ours) == _components(len(sigs), np.array(sorted(expected)))


def _lean(row):
    from datasketch import LeanMinHash

    return LeanMinHash(seed=1, hashvalues=row, scheme=minhash.SCHEME)


def _components(n, pairs):
    labels = connected_components(n, np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    groups = collections.defaultdict(set)
    for node, label in enumerate(labels):
        groups[label].add(node)
    return sorted(sorted(g) for g in groups.values())


def test_connected_components_follow_chains_and_label_by_smallest_node():
    edges = np.array([[5, 4], [4, 3], [3, 2], [7, 8], [0, 9]])

    labels = connected_components(10, edges)

    assert labels.tolist() == [0, 1, 2, 2, 2, 2, 6, 7, 7, 0]


def test_rows_as_json_matches_json_dumps_including_escapes_and_nulls():
    rows = [
        {"id": "a", "text": 'quote " backslash \\ newline \n tab \t cr \r', "url": None},
        {"id": "b", "text": "bell \x07 and unicode é ✓", "url": "https://x.org/?q=\"1\""},
    ]

    out = rows_as_json(pa.Table.from_pylist(rows))

    assert out.to_pylist() == [json.dumps(r, ensure_ascii=False) for r in rows]
