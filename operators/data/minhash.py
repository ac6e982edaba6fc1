"""Word n-gram MinHash signatures for a whole batch of documents at once.

The signatures are bit-identical to datasketch's `MinHash(scheme="affine32")` fed with the
same shingle hashes (`datasketch_minhash` below builds that reference; a test checks it), but
instead of one Python call per document every step runs over the whole batch:

    texts ──split on whitespace (Arrow)──▶ raw words ──dictionary-encode──▶ distinct raw words
    distinct words ──lowercase, trim punctuation, xxh64 (once per distinct word)──▶ word hashes
    word hashes ──polynomial over n consecutive words, no doc crossing──▶ shingle hashes
    shingle hashes ──fmix32, a·h+b mod 2³² for all perms, min per doc (reduceat)──▶ signatures

Normalizing the few distinct words of a batch instead of its whole text is what makes this
cheap. Documents with fewer than `ngram_size` words get one shingle of all their words (as
datatrove does); documents without words get the empty signature (all 0xFFFFFFFF) and are
flagged by `has_words`, so callers keep them out of LSH.
"""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasketch import LeanMinHash, MinHash

SCHEME = "affine32"
EMPTY = np.uint32(0xFFFFFFFF)
# Odd 64-bit multiplier for the polynomial shingle hash (the golden-ratio constant).
_POLY = np.uint64(0x9E3779B97F4A7C15)
# MurmurHash3's 32-bit finalizer (shifts and multipliers), which datasketch applies to every
# hash before its affine permutations; the signature test against datasketch checks it.
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
# Shingles per chunk of the (perms × shingles) matrix: 112 × 8k uint32 ≈ 3.7 MB stays in cache;
# 16k chunks measured ~1.5× slower here.
_CHUNK = 8_192


def permutations(num_perm: int, seed: int) -> np.ndarray:
    """datasketch's own affine32 permutation parameters, shape (2, num_perm) uint32."""
    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


def _normalize(words: pa.Array) -> pa.Array:
    """Lowercase (Unicode) and trim ASCII punctuation from both ends ("(World)!" -> "world").

    Punctuation inside a word stays ("don't", "os.path"): stable under re-formatting, and far
    cheaper than a Unicode regex.
    """
    return pc.utf8_trim(pc.utf8_lower(words), characters=string.punctuation)


def normalized_words(texts: pa.Array) -> list[list[str]]:
    """Each text's normalized words, empty ones dropped (the readable twin of `word_hashes`)."""
    split = pc.ascii_split_whitespace(texts).to_pylist()
    return [[w for w in _normalize(pa.array(ws, pa.string())).to_pylist() if w] for ws in split]


def word_hash(word: str) -> int:
    return xxhash.xxh64_intdigest(word.encode())


def word_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every normalized word of the batch (uint64) and per-document offsets (n+1)."""
    split = pc.ascii_split_whitespace(texts)
    offsets = string_offsets(split).astype(np.int64)
    offsets -= offsets[0]
    encoded = pc.dictionary_encode(pc.list_flatten(split))
    distinct = _normalize(encoded.dictionary)
    distinct_hashes = np.fromiter(
        map(xxhash.xxh64_intdigest, distinct.cast(pa.binary()).to_pylist()), dtype=np.uint64, count=len(distinct)
    )
    distinct_kept = np.diff(string_offsets(distinct)) > 0  # a word of punctuation only is no word
    index = _int_values(encoded.indices)
    kept = distinct_kept[index]
    kept_before = np.concatenate([[0], np.cumsum(kept)])
    return distinct_hashes[index][kept], kept_before[offsets]


def exact_hashes(texts: pa.Array, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """128-bit hash of each document's normalized word sequence, shape (n, 2) uint64.

    A text without words ("!!! ???") is hashed as it is: two different word-less texts are not
    the same text.
    """
    raw = texts.to_pylist()
    digests = [
        xxhash.xxh3_128_digest(hashes[lo:hi].tobytes() if hi > lo else b"\x00raw\x00" + raw[i].encode())
        for i, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:]))
    ]
    return np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)


def take_docs(hashes: np.ndarray, offsets: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The word hashes and offsets of a subset of the documents."""
    lengths = offsets[docs + 1] - offsets[docs]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)])
    positions = np.repeat(offsets[docs] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return hashes[positions], new_offsets


def shingle_hash(word_hashes_: list[int]) -> int:
    """32-bit hash of one shingle from its words' 64-bit hashes (scalar twin of the batch code)."""
    h = 0
    for wh in word_hashes_:
        h = (h * int(_POLY) + wh) & 0xFFFFFFFFFFFFFFFF
    return h >> 32


def shingle_hashes(hashes: np.ndarray, offsets: np.ndarray, ngram_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of a batch (uint32) and the document each belongs to, grouped by document."""
    counts = np.diff(offsets)
    n = ngram_size
    # h_i = Σ_k wh[i+k]·P^(n-1-k) mod 2^64 for every start i: n shifted multiply-adds.
    full = np.zeros(max(len(hashes) - n + 1, 0), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            full = full * _POLY + hashes[k : k + len(full)]
    doc_of_start = np.repeat(np.arange(len(counts)), counts)[: len(full)]
    # A start is a shingle of its document when all n words lie inside that document.
    inside = np.arange(len(full)) <= offsets[1:][doc_of_start] - n
    out_hashes = [(full[inside] >> np.uint64(32)).astype(np.uint32)]
    out_docs = [doc_of_start[inside]]
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        out_hashes.append(np.array([shingle_hash(hashes[offsets[d] : offsets[d + 1]].tolist()) for d in short], np.uint32))
        out_docs.append(short)
    # Short documents have no full-length shingle, so every document's shingles stay contiguous.
    return np.concatenate(out_hashes), np.concatenate(out_docs)


def signatures(texts: pa.Array, ngram_size: int, perms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (n_docs × num_perm, uint32) and a has-words mask for a batch of texts."""
    return signatures_of_word_hashes(*word_hashes(texts), ngram_size, perms)


def signatures_of_word_hashes(
    hashes: np.ndarray, offsets: np.ndarray, ngram_size: int, perms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    shingles, docs = shingle_hashes(hashes, offsets, ngram_size)
    return signatures_of_shingles(shingles, docs, len(offsets) - 1, perms), np.diff(offsets) > 0


def signatures_of_shingles(shingles: np.ndarray, docs: np.ndarray, n_docs: int, perms: np.ndarray) -> np.ndarray:
    """Signatures (n_docs × num_perm) from shingle hashes grouped by document (`shingle_hashes`)."""
    # Transposed (perms × docs): the min-reduction then runs along contiguous memory.
    sig = np.full((perms.shape[1], n_docs), EMPTY, dtype=np.uint32)
    a, b = perms[0][:, None], perms[1][:, None]
    premixed = fmix32(shingles)
    for lo in range(0, len(premixed), _CHUNK):
        h = premixed[lo : lo + _CHUNK]
        d = docs[lo : lo + _CHUNK]
        seg = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        cols = d[seg]
        sig[:, cols] = np.minimum(sig[:, cols], np.minimum.reduceat(a * h + b, seg, axis=1))
    return np.ascontiguousarray(sig.T)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer on uint32 values (a bijection that spreads structured inputs)."""
    s1, m1, s2, m2, s3 = _FMIX32
    with np.errstate(over="ignore"):
        h = (h ^ (h >> s1)) * m1
        h = (h ^ (h >> s2)) * m2
    return h ^ (h >> s3)


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values: np.sort and a mask, because numpy 2.4's np.unique on 64-bit integers
    measured 15-20x slower here (0.5 s against 0.03 s for 466k values)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def shingle_sets(texts: pa.Array, ngram_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each document's set of 32-bit shingle hashes (the set its MinHash signature estimates), as
    sorted distinct values (uint32) and per-document offsets (n+1)."""
    hashes, offsets = word_hashes(texts)
    return sets_of_shingles(*shingle_hashes(hashes, offsets, ngram_size), len(offsets) - 1)


def sets_of_shingles(shingles: np.ndarray, docs: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """`shingle_sets` from shingle hashes grouped by document (`shingle_hashes`)."""
    keys = distinct((docs.astype(np.uint64) << np.uint64(32)) | shingles.astype(np.uint64))
    doc_of_key = (keys >> np.uint64(32)).astype(np.int64)
    bounds = np.searchsorted(doc_of_key, np.arange(n_docs + 1), side="left")
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), bounds.astype(np.int64)


def datasketch_minhash(text: str, ngram_size: int, num_perm: int, seed: int) -> LeanMinHash:
    """The same signature built document by document with datasketch (reference for tests)."""
    words = normalized_words(pa.array([text]))[0]
    hashes = [word_hash(w) for w in words]
    if len(words) < ngram_size:
        grams = [hashes] if hashes else []
    else:
        grams = [hashes[i : i + ngram_size] for i in range(len(words) - ngram_size + 1)]
    m = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME, hashfunc=shingle_hash)
    m.update_batch(grams)
    return LeanMinHash(m)


def string_offsets(arr: pa.Array) -> np.ndarray:
    """Zero-copy numpy view of the int32 offsets of a string or list array."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]


def _int_values(arr: pa.Array) -> np.ndarray:
    """Zero-copy numpy view of a null-free int32 array (Arrow's to_numpy was slow here)."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr)]
