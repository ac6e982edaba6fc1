"""Llama 2's contamination matches (Appendix A.6): spans of tokens an evaluation sample shares with one
corpus document, at least `min_ngram` long, with a small budget of mismatched positions.

The paper: "We consider a token to be contaminated if it appears in any token n-gram longer than
10 tokens in both the evaluation sample and the training set [...] we allow a small 'skipgram
budget' of four tokens, so that matched spans between an evaluation sample and the training data
can differ in at most four positions (we do not allow trailing mismatches, or mismatches in the
first 10 tokens)." It calls these spans "10(+)-skipgrams".

What counts as a match here, exactly: sample tokens s[i : i+L] and tokens d[j : j+L] of ONE document,

    L >= n                                  n = min_ngram (10)
    s[i+k] == d[j+k] for every k < n        no mismatch in the first n tokens
    s[i+L-1] == d[j+L-1]                    no trailing mismatch
    #{k < L : s[i+k] != d[j+k]} <= budget   max_mismatches (4); substitutions only, no gaps

Every sample token inside a match is contaminated, its mismatched positions included (the span
matched, with the budget). A match never runs from one document into the next (the suffix arrays
of Lee et al. (2022), which the paper used, separate documents); BOS and EOS are document tokens
like any other and the samples, encoded without them, simply never match them.

    sample    a b c d e f g h i j k X m n Y p q R S
    document  a b c d e f g h i j k l m n o p q r s ...
              └─── 10 equal ────┘
              └──────── match: 17 tokens ─────┘   X, Y: mismatches inside it; R, S: trailing, left out

How they are found: every n-gram of every sample is a seed, hashed (a polynomial hash of its n
tokens mod 2**64) and sorted into a `SampleIndex` (one entry per sample token: small). A block of
corpus tokens is hashed at every position in n vectorised passes. One flag per hash prefix (~64
prefixes per seed) lets only ~1.5% of the positions that are no seed through to the binary search
among the seeds; a position whose hash is a seed's is compared token by token (a hash collision
costs time, never a false match) and extended along its diagonal. From one seed start the longest
valid match ends on the last matching position before the (budget + 1)-th mismatch, and it covers
every shorter valid match from that start, so one number per seed start says all: the furthest end
over every document (`furthest_ends`, which also skips the seeds that a match already extended
makes redundant). A sample's contaminated tokens are the union of those spans (`contaminated_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplying by it mod 2**64 loses nothing
_FILTER_SLOTS_PER_SEED = 64  # ~1.5% of non-seed hashes pass the prefilter
_FILTER_BITS = (16, 28)  # 64 KiB .. 256 MiB of flags


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of tokens[p : p+n] for every p (len(tokens) - n + 1 of them; none for a shorter array)."""
    count = len(tokens) - n + 1
    hashes = np.zeros(max(count, 0), np.uint64)
    for k in range(n if count > 0 else 0):
        hashes *= _BASE  # wraps mod 2**64, as intended
        hashes += tokens[k : k + count]
    return hashes


@dataclass(frozen=True)
class SampleIndex:
    """The evaluation samples' tokens end to end, and every n-gram inside one sample as a seed, by hash."""

    tokens: np.ndarray  # uint16: sample i is tokens[offsets[i] : offsets[i + 1]]
    offsets: np.ndarray  # int64, one more than there are samples
    seed_hashes: np.ndarray  # uint64, sorted
    seed_starts: np.ndarray  # int64: where in `tokens` each seed (in seed_hashes order) starts
    seed_limits: np.ndarray  # int64: the end of the sample that seed is in
    min_ngram: int
    may_be_seed: np.ndarray  # bool per hash prefix (hash >> prefix_shift): True where some seed has it
    prefix_shift: np.uint64

    @classmethod
    def build(cls, samples: Sequence[Sequence[int]], min_ngram: int) -> SampleIndex:
        lengths = np.array([len(s) for s in samples], np.int64)
        offsets = np.zeros(len(samples) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([np.asarray(s, np.int64) for s in samples]) if samples else np.zeros(0, np.int64)
        if flat.size and not 0 <= flat.min() <= flat.max() < 2**16:
            raise ValueError("sample token ids must fit uint16, as the corpus's do")
        tokens = flat.astype(np.uint16)
        hashes = ngram_hashes(tokens, min_ngram)
        starts = np.arange(len(hashes), dtype=np.int64)
        limits = offsets[np.searchsorted(offsets, starts, side="right")] if len(starts) else starts
        inside = starts + min_ngram <= limits  # the n-gram does not run into the next sample
        order = np.argsort(hashes[inside], kind="stable")
        seed_hashes = hashes[inside][order]
        bits = min(max(int(_FILTER_SLOTS_PER_SEED * len(seed_hashes)).bit_length(), _FILTER_BITS[0]), _FILTER_BITS[1])
        may_be_seed = np.zeros(2**bits, bool)
        shift = np.uint64(64 - bits)
        may_be_seed[seed_hashes >> shift] = True
        return cls(tokens, offsets, seed_hashes, starts[inside][order], limits[inside][order], min_ngram,
                   may_be_seed, shift)


def match_length(sample: np.ndarray, document: np.ndarray, n: int, max_mismatches: int) -> tuple[int, int]:
    """The longest match (see the module doc) that starts at both arrays' first token, and how many of
    its first tokens are equal before the first mismatch; (0, 0) if there is no match."""
    m = min(len(sample), len(document))
    if m < n:
        return 0, 0
    differ = sample[:m] != document[:m]
    if differ[:n].any():
        return 0, 0
    allowed = ~differ & (np.cumsum(differ) <= max_mismatches)  # a matching position within the budget
    mismatches = np.flatnonzero(differ)
    return int(np.flatnonzero(allowed)[-1]) + 1, int(mismatches[0]) if len(mismatches) else m


def furthest_ends(
    index: SampleIndex, values: np.ndarray, offsets: np.ndarray, max_mismatches: int, block_tokens: int
) -> dict[int, int]:
    """Seed start -> the furthest end of a match from it in these documents (positions in `index.tokens`).

    `values`, `offsets`: documents end to end, document d is values[offsets[d] : offsets[d + 1]]
    (an Arrow list column's buffers). Hashes `block_tokens` positions at a time, so memory stays
    about 30 bytes per block token whatever the size of the documents.

    A seed that lies on the same diagonal (corpus position - sample position) as a match already
    extended, inside that match's leading run of equal tokens, is skipped: it would see the same
    mismatches and end at the same place, inside a span already found. So the spans returned cover
    every match, one per run, not one per seed (a copied sample costs one extension, not one per token).
    """
    n, best = index.min_ngram, {}
    runs: dict[int, int] = {}  # diagonal -> end of the equal run of the last match extended on it
    first, stop = int(offsets[0]), int(offsets[-1]) - n + 1  # n-gram starts to look at
    for block in range(first, max(stop, first), block_tokens):
        hashes = ngram_hashes(values[block : min(block + block_tokens, stop) + n - 1], n)
        hit = np.flatnonzero(index.may_be_seed[hashes >> index.prefix_shift])
        lo = np.searchsorted(index.seed_hashes, hashes[hit], side="left")
        found = lo < len(index.seed_hashes)
        found[found] = index.seed_hashes[lo[found]] == hashes[hit[found]]
        hit, lo = hit[found], lo[found]
        hi = np.searchsorted(index.seed_hashes, hashes[hit], side="right")
        positions = hit + block
        doc_ends = offsets[np.searchsorted(offsets, positions, side="right")]
        inside = positions + n <= doc_ends  # not an n-gram that runs into the next document
        hits = (a[inside].tolist() for a in (positions, doc_ends, lo, hi))
        for position, doc_end, seeds_from, seeds_to in zip(*hits):
            seeds = (index.seed_starts[seeds_from:seeds_to].tolist(), index.seed_limits[seeds_from:seeds_to].tolist())
            for start, limit in zip(*seeds):
                diagonal = position - start
                if best.get(start, 0) == limit or runs.get(diagonal, -1) > start:
                    continue  # matched to the end of its sample already, or inside a match's equal run
                length, run = match_length(index.tokens[start:limit], values[position:doc_end], n, max_mismatches)
                if length:
                    best[start] = max(best.get(start, 0), start + length)
                    runs[diagonal] = start + run
    return best


def contaminated_counts(index: SampleIndex, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per sample: how many of its tokens lie inside at least one span [starts[k], ends[k])."""
    depth = np.zeros(len(index.tokens) + 1, np.int64)
    np.add.at(depth, starts, 1)
    np.add.at(depth, ends, -1)
    covered = np.zeros(len(index.tokens) + 1, np.int64)
    np.cumsum(np.cumsum(depth[:-1]) > 0, out=covered[1:])
    return covered[index.offsets[1:]] - covered[index.offsets[:-1]]
