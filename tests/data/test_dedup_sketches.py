"""The pieces under dedup: batch MinHash, LSH banding, exact verification, partitioned files and
connected components (no Ray needed)."""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHashLSH
from datatrove.utils.text import simplify_text

from operators.data import minhash
from operators.data.connected_components import connected_components, star_components
from operators.data.dedup_candidates import jaccard_of_pairs
from operators.data.json_records import rows_as_json
from operators.data.lsh_buckets import candidate_pairs, optimal_bands_rows
from operators.data.partitioned_files import read_partition, write_partitioned

TEXTS = [
    argparse.__doc__,
    collections.__doc__,
    json.__doc__,
    json.__doc__.replace("JSON", "Json", 3),
    "short text",
    "",
    "Hello, World!  hello world",
    "Ünïcode — café, naïve: 3.14 %; 日本語のテキスト、です。 ΟΔΟΣ",
]
# Text with everything datatrove's simplification changes: case (full and final-sigma lowercase),
# digits of several scripts and decimal separators, ASCII / typographic / CJK / fullwidth punctuation and
# its runs, control characters, whitespace runs (Unicode spaces too), diacritics, characters that
# canonical decomposition turns into punctuation, and scripts without case or spaces.
SIMPLIFIED = [
    "Hello, World!  hello\n(world) -- don't stop: os.path",
    "Ünïcödé café naïve Ångström façade — «quoted» „zitiert“ ‘single’ … x86_64",
    "3.14 and 1,000,000 and v2.0.1; 1..2 ٣٤٥ ٣٫٥ १२३ １２３ ²³ ½ Ⅻ",
    "İstanbul ŞEHİR ΣΟΦΟΣ ΟΔΟΣ. ΣΑΣ.ΑΒ \u212b \u212a",
    "日本語のテキスト、です。【見出し】「引用」《書名》（括弧）！？ 한국어 텍스트입니다",
    "tab\tsep\x0bvt\x0cff\rcr\x1cfs\x85nel\x00nul a\u00a0b\u2003c\u3000d   \n\n  e",
    "e\u0301 \u0301 x\u0301y a\u037eb c\u1fefd ﬁne ｆｕｌｌ emoji😀word 👍🏽 مرحبا بالعالم Привет, Мир!",
    "!!! ??? ... ---",
    "",
]


def test_batch_signatures_equal_datasketch_minhash_document_by_document():
    sig, has_words = minhash.signatures(pa.array(TEXTS), 5, minhash.permutations(64, seed=7))

    for text, row in zip(TEXTS, sig):
        if text:
            assert np.array_equal(row, minhash.datasketch_minhash(text, 5, 64, seed=7).hashvalues)
    assert has_words.tolist() == [True, True, True, True, True, False, True, True]


def test_words_are_lowercase_split_at_punctuation_with_numbers_as_zero_and_no_diacritics():
    words = minhash.normalized_words(pa.array(["Hello, World!  hello\n(world) --", "don't stop: os.path",
                                               "Python 3.11.4 — Ünïcode café"]))

    assert words == [["hello", "world", "hello", "world"], ["don", "t", "stop", "os", "path"],
                     ["python", "0", "0", "unicode", "cafe"]]


def test_words_are_datatroves_simplified_text_word_for_word():
    texts = SIMPLIFIED + TEXTS

    assert minhash.normalized_words(pa.array(texts)) == [simplify_text(t).split() for t in texts]


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


def test_shingle_sets_give_the_exact_jaccard_of_the_benchmark_truth():
    truth = _bench_module("_dedup_quality")
    texts = [json.__doc__, json.__doc__.replace("JSON", "data", 4), argparse.__doc__, "three short words", "Three, short WORDS!"]
    values, offsets = minhash.shingle_sets(pa.array(texts), 5)
    pairs = np.array([(0, 1), (0, 2), (3, 4), (1, 0)])

    ours = jaccard_of_pairs(values, offsets, pairs[:, 0], *_sets_of(values, offsets, pairs[:, 1]))

    expected = [truth.jaccard(truth.shingles(texts[a]), truth.shingles(texts[b])) for a, b in pairs]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0.5 < ours[0] < 1 and ours[1] < 0.1 and ours[2] == 1.0


def _sets_of(values, offsets, docs):
    """The sets of `docs`, laid out one per pair as jaccard_of_pairs takes the B sides."""
    lengths = offsets[docs + 1] - offsets[docs]
    return np.concatenate([values[offsets[d] : offsets[d + 1]] for d in docs]), np.r_[0, np.cumsum(lengths)]


def _bench_module(name: str):
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("threshold,num_perm", [(0.5, 64), (0.8, 112), (0.85, 128), (0.9, 256)])
def test_bands_and_rows_for_a_threshold_are_datasketchs_choice(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # public API: fails if datasketch changes its rule

    assert optimal_bands_rows(threshold, num_perm) == (lsh.b, lsh.r)


def test_star_steps_find_the_same_components_as_union_find():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 200))
        edges = rng.integers(0, n, size=(int(rng.integers(1, 300)), 2))
        edges = edges[edges[:, 0] != edges[:, 1]]

        nodes, labels, _ = star_components(edges)

        assert nodes.tolist() == sorted(set(edges.ravel().tolist()))
        assert labels.tolist() == connected_components(n, edges)[nodes].tolist()


def test_star_steps_join_a_long_chain_in_logarithmically_many_steps():
    order = np.random.default_rng(1).permutation(2000)
    chain = np.stack([order[:-1], order[1:]], axis=1)  # 2000 nodes, one path in random label order

    nodes, labels, steps = star_components(chain)

    assert len(nodes) == 2000 and set(labels.tolist()) == {0}
    assert steps <= 4 * 11  # a few times log2(2000)


def test_partitioned_file_round_trip_keeps_row_order_and_empty_partitions(tmp_path):
    schema = pa.schema([("row", pa.int64())])
    first = pa.table({"row": np.arange(10)}, schema=schema)
    second = pa.table({"row": np.arange(10, 13)}, schema=schema)
    write_partitioned(tmp_path / "a.arrow", first, np.arange(10) % 3, 4)
    write_partitioned(tmp_path / "b.arrow", second, np.zeros(3, np.int64), 4)

    partitions = [read_partition([tmp_path / "a.arrow", tmp_path / "b.arrow"], r, schema).column("row").to_pylist()
                  for r in range(4)]

    assert partitions == [[0, 3, 6, 9, 10, 11, 12], [1, 4, 7], [2, 5, 8], []]
    assert not list(tmp_path.glob(".*"))  # written under a temporary name, then renamed
