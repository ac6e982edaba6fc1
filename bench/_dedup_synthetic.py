"""Synthetic documents for scaling runs: millions of shingle-realistic texts in seconds.

Words follow a Zipf law (s = 1.1) over a 60k vocabulary whose most frequent words are English
function words (so the filter's stop-word rule passes, as on real text) and the rest made-up
lowercase words; a document has 40 + Poisson(60) words (~600 bytes). Copies, of a document of the
current or the previous shard (so that duplicates cross shards), which may itself be a copy
(so that chains form):
  5 %  exact copies,
  11 % near copies with 1-4 words replaced (5-gram Jaccard ~0.68-0.90 at 100 words);
and 1 % of all documents upper-cased (which normalization undoes). Each ends with a full stop.
Written as a documents/ folder of DOCUMENTS_SCHEMA shards (what `ingest` makes), 200k documents
per shard, everything vectorised (numpy + Arrow compute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.formats.documents import DOCUMENTS_SCHEMA, write_table

FUNCTION_WORDS = ["the", "of", "and", "to", "a", "in", "that", "is", "for", "it", "with", "as", "was", "on", "be",
                  "by", "this", "have", "from", "are", "not", "or", "at", "which", "but", "an", "they", "you"]
VOCABULARY = 60_000
SHARD_DOCS = 200_000


def vocabulary(seed: int = 0) -> pa.Array:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    made_up = set()
    while len(made_up) < VOCABULARY - len(FUNCTION_WORDS):
        n = rng.integers(2, 11)
        made_up.add(letters[rng.integers(0, 26, n)].tobytes().decode())
    return pa.array(FUNCTION_WORDS + sorted(made_up - set(FUNCTION_WORDS))[: VOCABULARY - len(FUNCTION_WORDS)])


def zipf_cdf(size: int, s: float = 1.1) -> np.ndarray:
    """Cumulative probabilities of word ranks 1..size under a Zipf law, what `word_ids` draws from."""
    cdf = np.cumsum(np.arange(1, size + 1, dtype=np.float64) ** -s)
    return cdf / cdf[-1]


def word_ids(rng: np.random.Generator, n: int, cdf: np.ndarray) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(n)).astype(np.int32)


def render(words: pa.Array, ids: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """The texts of documents given as word ids (flat) and offsets: words joined by spaces, a full
    stop at the end (as the filter's C4 rule wants), 1 % upper-cased (which normalization undoes)."""
    texts = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), words.take(pa.array(ids))), " ")
    texts = pc.binary_join_element_wise(texts, pa.scalar("."), "")
    recase = rng.random(len(offsets) - 1) < 0.01
    return pc.if_else(pa.array(recase), pc.utf8_upper(texts), texts)


def _shard(rng: np.random.Generator, n: int, cdf: np.ndarray, previous: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """Word ids (flat) and offsets of n documents, duplicates included."""
    lengths = 40 + rng.poisson(60, n)
    ids = word_ids(rng, int(lengths.sum()), cdf)
    offsets = np.r_[0, np.cumsum(lengths)]
    pool_ids, pool_offsets = (ids, offsets) if previous is None else previous
    kind = rng.random(n)
    copy = kind < 0.16  # 5 % exact, 11 % near
    source = rng.integers(0, len(pool_offsets) - 1, n)
    from_previous = (rng.random(n) < 0.5) & (previous is not None)
    source[~from_previous] = rng.integers(0, np.maximum(np.arange(n), 1))[~from_previous]  # an earlier doc here
    rows = np.arange(n)
    # Resolve copies in order so that a chain (copy of a copy) copies the already edited text.
    out_lengths = lengths.copy()
    src_ids = np.where(from_previous, -1, source)
    pieces = []
    for i in rows:
        if copy[i]:
            if from_previous[i]:
                lo, hi = pool_offsets[source[i]], pool_offsets[source[i] + 1]
                words = pool_ids[lo:hi].copy()
            else:
                words = pieces[src_ids[i]].copy() if src_ids[i] < i else ids[offsets[i] : offsets[i + 1]].copy()
            if kind[i] >= 0.05:  # near copy: 1-4 words replaced
                k = rng.integers(1, 5)
                words[rng.integers(0, len(words), k)] = word_ids(rng, k, cdf)
            pieces.append(words)
            out_lengths[i] = len(words)
        else:
            pieces.append(ids[offsets[i] : offsets[i + 1]])
    return np.concatenate(pieces), np.r_[0, np.cumsum(out_lengths)]


def build(out: Path, docs: int, seed: int = 0) -> dict:
    """Write `docs` documents into out/documents/part-NNNNN.parquet; returns counts."""
    words = vocabulary(seed)
    cdf = zipf_cdf(len(words))
    rng = np.random.default_rng(seed)
    previous, written, text_bytes = None, 0, 0
    for shard in range(-(-docs // SHARD_DOCS)):
        n = min(SHARD_DOCS, docs - written)
        ids, offsets = _shard(rng, n, cdf, previous)
        texts = render(words, ids, offsets, rng)
        table = pa.table({
            "id": pa.array([f"s{shard:04d}-{i:06d}" for i in range(n)]),
            "source": pa.array(["synthetic"] * n),
            "url": pa.nulls(n, pa.string()),
            "text": texts,
            "metadata": pa.array(["{}"] * n),
        }, schema=DOCUMENTS_SCHEMA)
        write_table(table, out / "documents" / f"part-{shard:05d}.parquet")
        text_bytes += pc.sum(pc.binary_length(texts)).as_py()
        previous, written = (ids, offsets), written + n
    return {"docs": written, "text_mb": text_bytes / 1e6}
