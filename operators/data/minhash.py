"""Word n-gram MinHash signatures for a whole batch of documents at once.

The signatures are bit-identical to datasketch's `MinHash(scheme="affine32")` fed with the
same shingle hashes (`datasketch_minhash` below builds that reference; a test checks it), but
instead of one Python call per document every step runs over the whole batch:

    texts ──split on ASCII whitespace (Arrow)──▶ tokens ──dictionary-encode──▶ distinct tokens
    distinct tokens ──simplify (`_simplify`), xxh64 (once per distinct token)──▶ 0..k word hashes each
    word hashes ──polynomial over n consecutive words, no doc crossing──▶ shingle hashes
    shingle hashes ──fmix32, a·h+b mod 2³² for all perms, min per doc (reduceat)──▶ signatures

The words are those of datatrove's `simplify_text` (its default `TextNormConfig`, what FineWeb's
MinHash dedup shingles), split on whitespace: lowercase (Python's `str.lower`), every run of
decimal digits (Unicode Nd as this Python knows them; datatrove's `regex` may know a few newer
scripts' digits) with at most one decimal separator inside -> "0", datatrove's punctuation and
control characters -> word separators, diacritics removed (NFD, then no Mn characters). No step
reaches across whitespace, so simplifying each of the few distinct tokens of a batch instead of its
whole text gives the same words (a test checks them against datatrove's), and is what makes this
cheap: ASCII tokens in Arrow and numpy, the others in Python.

Documents with fewer than `ngram_size` words get one shingle of all their words (as datatrove
does); documents without words get the empty signature (all 0xFFFFFFFF) and are flagged by
`has_words`, so callers keep them out of LSH.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata

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


def normalized_words(texts: pa.Array) -> list[list[str]]:
    """Each text's words (the readable twin of `word_hashes`)."""
    tokens = pc.ascii_split_whitespace(texts)
    words = _simplify(pc.list_flatten(tokens)).to_pylist()
    bounds = string_offsets(tokens) - string_offsets(tokens)[0]
    return [[w for token in words[lo:hi] for w in token] for lo, hi in zip(bounds[:-1], bounds[1:])]


def word_hash(word: str) -> int:
    return xxhash.xxh64_intdigest(word.encode())


def word_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word of the batch (uint64) and per-document offsets (n+1)."""
    tokens = pc.ascii_split_whitespace(texts)
    offsets = string_offsets(tokens).astype(np.int64)
    offsets -= offsets[0]
    encoded = pc.dictionary_encode(pc.list_flatten(tokens))
    words = _simplify(encoded.dictionary)
    flat = pc.list_flatten(words)
    distinct_hashes = np.fromiter(map(xxhash.xxh64_intdigest, flat.cast(pa.binary()).to_pylist()), np.uint64, len(flat))
    word_offsets = string_offsets(words).astype(np.int64)
    hashes, token_offsets = take_docs(distinct_hashes, word_offsets - word_offsets[0], _int_values(encoded.indices))
    return hashes, token_offsets[offsets]


# datatrove's punctuation (`datatrove.utils.text.PUNCTUATION`): ASCII punctuation, control characters
# but tab and newline, and these marks; its list also holds the fullwidth digit one, which the digit
# rule has turned into "0" before.
_MARKS = ("\u00ab\u00b4\u00bb"  # « ´ »
          "\u2013\u2014\u2019\u201c\u201d\u201e\u2026\u2236\u2501\u25ba"  # – — ’ “ ” „ … ∶ ━ ►
          "\u3001\u3002\u3008\u3009\u300a\u300b\u300c\u300d\u3010\u3011"  # CJK: 、。〈〉《》「」【】
          "\uff01\uff05\uff08\uff09\uff0c\uff0e\uff1a\uff1b\uff1f\uff5e")  # fullwidth ！％（），．：；？～
_SEPARATORS = "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)])) + string.punctuation + _MARKS
_SEPARATOR_RUN = re.compile("[\\s" + "".join(map(re.escape, _SEPARATORS)) + "]+")
_NUMBER = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")  # separators: . , ، ٫ ⎖ ⎗ ⎘
# The same two rules for ASCII text: RE2 syntax for Arrow, and a byte -> byte table (other bytes kept).
_ASCII_NUMBER = r"[0-9]+(?:[.,][0-9]+)?"
_ASCII_TO_SPACE = np.arange(256, dtype=np.uint8)
_ASCII_TO_SPACE[[ord(c) for c in _SEPARATORS if ord(c) < 128]] = ord(" ")


def _simplify(tokens: pa.Array) -> pa.ListArray:
    """The words of each token (none, one or several): in Arrow for ASCII tokens, in Python for the others."""
    is_ascii = pc.string_is_ascii(tokens).to_numpy(zero_copy_only=False)
    numbered = pc.replace_substring_regex(pc.ascii_lower(tokens), _ASCII_NUMBER, "0")
    words = _without_empty(pc.ascii_split_whitespace(_map_bytes(numbered, _ASCII_TO_SPACE)))
    if is_ascii.all():
        return words
    other = np.flatnonzero(~is_ascii)
    other_words = pa.array([_simplify_one(t) for t in tokens.take(pa.array(other)).to_pylist()], pa.list_(pa.string()))
    merged = pa.concat_arrays([words.filter(pa.array(is_ascii)), other_words])
    position = np.empty(len(tokens), np.int64)
    position[np.r_[np.flatnonzero(is_ascii), other]] = np.arange(len(tokens))
    return merged.take(pa.array(position))


def _simplify_one(token: str) -> list[str]:
    lowered = token.lower()
    # Letters only (most tokens): no digit, separator or space to look for.
    words = [lowered] if token.isalpha() else _SEPARATOR_RUN.split(_NUMBER.sub("0", lowered))
    return [w for w in map(_without_diacritics, words) if w]


def _without_diacritics(word: str) -> str:
    """NFD without nonspacing marks. After the split at separators, as in datatrove: NFD turns a few
    characters into separators (U+037E, the Greek question mark, into ";"), which stay in their word."""
    return word if word.isascii() else unicodedata.normalize("NFD", word).translate(_nonspacing_marks())


@functools.cache
def _nonspacing_marks() -> dict[int, None]:
    """A `str.translate` table deleting Unicode category Mn, as this Python's `unicodedata` knows it (as
    datatrove reads it): built once per process (~0.2 s), ~10x faster than asking per character."""
    return dict.fromkeys(c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn")


def _map_bytes(strings: pa.Array, table: np.ndarray) -> pa.Array:
    """Each byte of each string through `table` (which must keep UTF-8 valid), in one numpy pass: a regex
    replacement of the same characters measured ~20x slower."""
    validity, offsets, data = strings.buffers()
    mapped = table[np.frombuffer(data, np.uint8)] if data is not None else np.zeros(0, np.uint8)
    return pa.Array.from_buffers(pa.string(), len(strings), [validity, offsets, pa.py_buffer(mapped)],
                                 strings.null_count, strings.offset)


def _without_empty(lists: pa.ListArray) -> pa.ListArray:
    """`lists` without its empty strings (Arrow's whitespace split leaves one at a leading or trailing space)."""
    flat = pc.list_flatten(lists)
    kept = np.diff(string_offsets(flat)) > 0
    if kept.all():
        return lists
    offsets = string_offsets(lists).astype(np.int64)
    kept_before = np.r_[0, np.cumsum(kept)]
    return pa.ListArray.from_arrays(pa.array(kept_before[offsets - offsets[0]].astype(np.int32)), flat.filter(pa.array(kept)))


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
