"""A second dedup benchmark corpus, built by a different script than `_dedup_corpus.py`: held out
from the text and the edits the stage's defaults were tuned on.

Base documents: the shipped demo corpora of another release and format (Django 4.2 docs from
pipelines/demo_data/django-docs-4.2.jsonl.gz and the Python 3.11 pages of python-docs-3.11.parquet),
cut at reST section headings into sections of at most ~2 KB (`_dedup_corpus.py` cuts Django 5.2
and the shared Python docs at blank lines into ~4 KB pieces and adds benchmark rows). Sections
that are natural near duplicates of an earlier one (Jaccard >= 0.6: the same security advisory in
the release notes of several branches) are left out, so the planted pairs are the corpus's only
near duplicates; otherwise a planted mirror joins such a family and its transitive pairs, below
0.8, would be scored as errors of the planted truth (found with datasketch's own MinHashLSH at 0.5,
then the exact Jaccard).

Planted pairs: for every section with >= 60 words, one copy edited line by line and character by
character, as a page differs from its mirror: lines dropped, repeated or moved, numbers changed,
letters of a word swapped (typos), words re-cased or re-punctuated, a boilerplate line added.
The copy is kept when its exact shingle Jaccard with the original (`bench._dedup_quality`, the
stage's documented normalization) is in [0.6, 1); the target is drawn per section, so the pairs
cover 0.6-1 (`_dedup_corpus.py` edits words, and only aimed at [0.8, 1) before).
Output: corpus/part-NNNN.jsonl (id, text) and planted.json ([[id_a, id_b, jaccard]]).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH

from bench._dedup_quality import jaccard, shingles

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "demo_data"
SECTION_BYTES = 2000
FILE_BYTES = 4_000_000
MIN_WORDS = 60
BOILERPLATE = ["Last updated: {n} days ago.", "Mirrored from the official documentation.", "Page {n} of 12",
               "© Contributors. Licensed under BSD.", "Skip to main content"]
_HEADING = re.compile(r"\n(?=[^\n]+\n[=\-~^*#]{3,}\n)")  # a line underlined with =, -, ~, ...


def sections(text: str) -> Iterator[str]:
    """The text cut before each reST heading, sections merged up to SECTION_BYTES."""
    current = ""
    for part in _HEADING.split(text):
        if current and len(current) + len(part) > SECTION_BYTES:
            yield current
            current = ""
        current = f"{current}\n{part}" if current else part
    if current:
        yield current


def base_documents() -> Iterator[tuple[str, str]]:
    with gzip.open(DEMO / "django-docs-4.2.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for i, section in enumerate(sections(row["text"])):
                yield f"django42:{row['id']}#{i}", section
    pages = pq.read_table(DEMO / "python-docs-3.11.parquet", columns=["id", "text"]).to_pylist()
    for row in pages:
        for i, section in enumerate(sections(row["text"])):
            yield f"py311:{row['id']}#{i}", section


def distinct_bases(bases: list[tuple[str, str]], limit: float = 0.6) -> list[tuple[str, str]]:
    """The bases, in order, without any whose exact Jaccard with an earlier kept one is >= limit."""
    lsh = MinHashLSH(threshold=0.5, num_perm=64)
    kept, sets = [], {}
    for doc_id, text in bases:
        sets[doc_id] = shingles(text)
        m = MinHash(num_perm=64, seed=7)
        m.update_batch([" ".join(g).encode() for g in sets[doc_id]])
        if any(jaccard(sets[doc_id], sets[other]) >= limit for other in lsh.query(m)):
            continue
        lsh.insert(doc_id, m)
        kept.append((doc_id, text))
    return kept


def _edit_line(line: str, rng: random.Random) -> str:
    words = line.split(" ")
    k = rng.randrange(len(words))
    w = words[k]
    op = rng.random()
    if op < 0.3 and len(w) > 3:  # a typo: two letters swapped
        i = rng.randrange(len(w) - 1)
        words[k] = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
    elif op < 0.5:
        words[k] = re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), w) if re.search(r"\d", w) else w.upper()
    elif op < 0.7:
        words[k] = rng.choice(["(", "\"", ""]) + w + rng.choice([",", ".", ";", ")", ""])
    else:
        words[k] = w.capitalize() if w.islower() else w.lower()
    return " ".join(words)


def near_copy(text: str, rng: random.Random, low: float) -> tuple[str, float] | None:
    """A copy with line edits whose true Jaccard with `text` is in [low, 1), or None."""
    original = shingles(text)
    lines = text.split("\n")
    rate = rng.uniform(0.02, 0.3)
    for _ in range(6):
        edited = []
        for line in lines:
            r = rng.random()
            if r < rate / 4:
                continue  # dropped
            edited.append(_edit_line(line, rng) if line and r < rate else line)
            if r > 1 - rate / 8:
                edited.append(line)  # repeated
        if len(edited) > 2 and rng.random() < rate:
            i, j = sorted(rng.sample(range(len(edited)), 2))
            edited.insert(i, edited.pop(j))  # a line moved up
        if rng.random() < 0.3:
            edited.insert(rng.choice([0, len(edited)]), rng.choice(BOILERPLATE).format(n=rng.randint(1, 99)))
        copy = "\n".join(edited)
        j = jaccard(original, shingles(copy))
        if low <= j < 1.0:
            return copy, j
        rate = rate / 2 if j < low else rate * 1.5
    return None


def build(out_dir: Path, seed: int = 1) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus"
    corpus.mkdir(exist_ok=True)
    rng = random.Random(seed)
    planted, rows = [], []
    for doc_id, text in distinct_bases(list(base_documents())):
        rows.append((doc_id, text))
        if len(text.split()) >= MIN_WORDS:
            made = near_copy(text, rng, low=0.6)
            if made:
                rows.append((doc_id + "/mirror", made[0]))
                planted.append([doc_id, doc_id + "/mirror", round(made[1], 4)])
    n_files = n_bytes = 0
    f = None
    for doc_id, text in rows:
        if f is None or f.tell() >= FILE_BYTES:
            if f is not None:
                f.close()
            f = (corpus / f"part-{n_files:04d}.jsonl").open("w", encoding="utf-8")
            n_files += 1
        line = json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n"
        f.write(line)
        n_bytes += len(line.encode())
    f.close()
    (out_dir / "planted.json").write_text(json.dumps(planted))
    return {"docs": len(rows), "bytes": n_bytes, "files": n_files, "planted_pairs": len(planted)}
