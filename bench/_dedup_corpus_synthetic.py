"""A dedup benchmark corpus of any size, millions of documents included: synthetic text whose only
near duplicates are planted pairs with a known exact Jaccard.

The text is `_dedup_synthetic`'s (Zipf words over a 60k vocabulary, 40 + Poisson(60) words, a
full stop, 1 % upper-cased), but not its copies: there a copy may be of a copy and an original may
be copied several times, so a family's transitive pairs fall below 0.8 and would count against
both systems' precision. Here a copy is made only from an original and an original is copied at
most once, so every family is exactly one planted pair:
  5 %  exact copies (J = 1);
  11 % near copies: one run of words replaced by random words, its length set for a target
       Jaccard drawn uniformly in [0.6, 1) (a run inside the text changes its length + 4 of the
       5-grams, a run at either end only its length), so the pairs fill every bin of 0.6-1.
Half the copies are of an original in the previous file (so that duplicates cross files), half
of one in their own file. planted.json holds each pair's exact 5-gram Jaccard of the two texts as
written (`bench._dedup_quality`), not the target. Unrelated documents share a few common 5-grams
at most ("of the and the a"): datasketch's MinHashLSH at 0.5 finds no candidate pair among 100k
documents that is not planted.
Output, as the other corpus builders: corpus/part-NNNN.jsonl (id, text) and planted.json
([[id_a, id_b, jaccard]]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench._dedup_quality import jaccard, shingles
from bench._dedup_synthetic import render, vocabulary, word_ids, zipf_cdf

EXACT, NEAR = 0.05, 0.11  # shares of all documents, as in _dedup_synthetic
FILE_DOCS = 50_000  # ~31 MB of JSONL a file
MIN_FILES = 4  # so that both systems' per-file readers get parallel work on a small corpus too


@dataclass
class _File:
    ids: list[str]
    words: list[np.ndarray]  # word ids, one array per document
    spare: np.ndarray  # originals not copied yet: what the next file may copy
    texts: list[str] | None = None


def build(out_dir: Path, docs: int, seed: int = 0) -> dict:
    """Write `docs` documents into out_dir/corpus/ and their planted pairs into out_dir/planted.json."""
    corpus = out_dir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    cdf = zipf_cdf(len(vocab))
    rng = np.random.default_rng(seed)
    per_file = min(FILE_DOCS, -(-docs // MIN_FILES))
    starts = range(0, docs, per_file)
    planted, n_bytes, previous = [], 0, None
    for index, start in enumerate(starts):
        current, copies = _file(rng, index, min(per_file, docs - start), cdf, previous)
        texts = render(vocab, np.concatenate(current.words), np.r_[0, np.cumsum([len(w) for w in current.words])], rng)
        n_bytes += _write_jsonl(corpus / f"part-{index:04d}.jsonl", current.ids, texts)
        current.texts = texts.to_pylist()
        for copy, (original, source) in copies.items():
            planted.append([original.ids[source], current.ids[copy],
                            jaccard(shingles(original.texts[source]), shingles(current.texts[copy]))])
        previous = current
    (out_dir / "planted.json").write_text(json.dumps(planted))
    return {"docs": docs, "bytes": n_bytes, "files": len(starts), "planted_pairs": len(planted)}


def _file(rng: np.random.Generator, index: int, n: int, cdf: np.ndarray,
          previous: _File | None) -> tuple[_File, dict[int, tuple[_File, int]]]:
    """n documents, 16 % of them copies; returns them and each copy's (file, document) source."""
    kind = rng.random(n)
    lengths = 40 + rng.poisson(60, n)
    words = np.split(word_ids(rng, int(lengths.sum()), cdf), np.cumsum(lengths)[:-1])
    is_copy = kind < EXACT + NEAR
    originals = np.flatnonzero(~is_copy)
    from_previous = is_copy & (rng.random(n) < 0.5) if previous else np.zeros(n, bool)
    here, there = np.flatnonzero(is_copy & ~from_previous), np.flatnonzero(from_previous)
    sources_here = rng.choice(originals, len(here), replace=False)
    current = _File([f"syn{index:04d}-{i:06d}" for i in range(n)], words, np.setdiff1d(originals, sources_here))
    copies = {int(i): (current, int(s)) for i, s in zip(here, sources_here)}
    if len(there):
        copies |= {int(i): (previous, int(s)) for i, s in zip(there, rng.choice(previous.spare, len(there), replace=False))}
    for i, (source_file, source) in copies.items():
        original = source_file.words[source]
        words[i] = original if kind[i] < EXACT else _near_copy(rng, original, cdf)
    return current, copies


def _near_copy(rng: np.random.Generator, words: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """`words` with one run replaced, long enough to change at most a (1 - J) / (1 + J) share of the
    5-grams of each side (so that the Jaccard is at least J, as a replacement word may be the same)
    for a target J drawn in [0.6, 1)."""
    target = rng.uniform(0.6, 1.0)
    changed = max(1, int((len(words) - 4) * (1 - target) / (1 + target)))
    if changed > 4:  # inside: the run and the four 5-grams that reach into it from the left
        run = changed - 4
        start = int(rng.integers(4, len(words) - run - 3))
    else:  # at the start or the end
        run = changed
        start = 0 if rng.random() < 0.5 else len(words) - run
    copy = words.copy()
    copy[start : start + run] = word_ids(rng, run, cdf)
    return copy


def _write_jsonl(path: Path, ids: list[str], texts: pa.Array) -> int:
    """One {"id", "text"} line per document, joined in Arrow: ids and texts hold only ASCII letters,
    digits, "-", spaces and full stops, which JSON writes as they are."""
    lines = pc.binary_join_element_wise('{"id": "', pa.array(ids), '", "text": "', texts, '"}\n', "")
    data = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "")[0].as_buffer()
    path.write_bytes(data)
    return data.size
