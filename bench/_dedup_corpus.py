"""Build the dedup benchmark corpus: real text from ../shared/data plus planted near duplicates.

Base documents (all written by people):
- Django 5.2 and Python 3.11 docs, split at blank lines into pieces of ~4 KB;
- the eval/ and sft-human/ rows, each row's strings joined, consecutive rows of a file
  packed into documents of ~3 KB (the size of a typical web page after extraction).
Only one Django release is used, so the corpus has few natural near duplicates of its own.

Planted pairs: for a seeded random 85 % of the base documents with ≥ 100 words, a copy with
word-level edits (replace / delete / insert words, sometimes a new first line) is added; a
copy is kept only if its true word 5-gram Jaccard with the original (`bench._dedup_quality`,
the stage's documented normalization) is in [0.6, 1), so that recall can be read per bin below
and above the 0.8 threshold. Output: corpus/part-NNNN.jsonl (id, text; ~14 MB each, so datatrove's
file-per-task readers get parallel work too) and planted.json ([[id_a, id_b, jaccard]]).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from bench._dedup_quality import jaccard, shingles

PIECE_BYTES = 4000
PACK_BYTES = 3000
FILE_BYTES = 14_000_000
PLANT_SHARE = 0.85  # of eligible base documents get a near copy: ~115 MB in all


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _pieces(text: str, limit: int) -> Iterator[str]:
    piece: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        piece.append(para)
        size += len(para) + 2
        if size >= limit:
            yield "\n\n".join(piece)
            piece, size = [], 0
    if piece:
        yield "\n\n".join(piece)


def base_documents(shared: Path) -> Iterator[tuple[str, str]]:
    for name in ("django-docs-3versions/django-docs-3versions.jsonl", "pydocs-3.11/pydocs-3.11.jsonl"):
        for line in (shared / name).open():
            row = json.loads(line)
            if "django" in name and row["version"] != "5.2.19":
                continue
            for i, piece in enumerate(_pieces(row["text"], PIECE_BYTES)):
                yield f"{row['id']}#{i}", piece
    for path in sorted((shared / "eval").glob("*.jsonl")) + sorted((shared / "sft-human").glob("*.jsonl")):
        rows, size, k = [], 0, 0
        for line in path.open():
            text = "\n".join(s for s in _strings(json.loads(line)) if s.strip())
            rows.append(text)
            size += len(text)
            if size >= PACK_BYTES:
                yield f"{path.stem}#{k}", "\n\n".join(rows)
                rows, size, k = [], 0, k + 1
        if rows:
            yield f"{path.stem}#{k}", "\n\n".join(rows)


def near_copy(text: str, rng: random.Random, low: float = 0.6) -> tuple[str, float] | None:
    """An edited copy of `text` with true 5-gram Jaccard in [low, 1), or None."""
    original = shingles(text)
    words = text.split(" ")
    rate = rng.uniform(0.002, 0.06)
    for _ in range(4):
        edited = list(words)
        for _ in range(max(1, int(len(words) * rate))):
            pos = rng.randrange(len(edited))
            op = rng.random()
            if op < 0.5:
                edited[pos] = rng.choice(words)
            elif op < 0.75 and len(edited) > 1:
                del edited[pos]
            else:
                edited.insert(pos, rng.choice(words))
        copy = " ".join(edited)
        if rng.random() < 0.2:
            copy = rng.choice(["Updated version\n", "Mirror copy:\n", "[archived page]\n"]) + copy
        j = jaccard(original, shingles(copy))
        if low <= j < 1.0:
            return copy, j
        rate = rate / 2 if j < low else rate * 2
    return None


def build(shared: Path, out_dir: Path, seed: int = 0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    planted = []
    n_docs = n_bytes = n_files = 0
    corpus = out_dir / "corpus"
    corpus.mkdir(exist_ok=True)
    f = None
    for doc_id, text in base_documents(shared):
        rows = [(doc_id, text)]
        if len(text.split()) >= 100 and rng.random() < PLANT_SHARE:
            made = near_copy(text, rng)
            if made:
                rows.append((doc_id + "/copy", made[0]))
                planted.append([doc_id, doc_id + "/copy", round(made[1], 4)])
        if f is None or f.tell() >= FILE_BYTES:
            if f is not None:
                f.close()
            f = (corpus / f"part-{n_files:04d}.jsonl").open("w")
            n_files += 1
        for i, t in rows:
            line = json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
            f.write(line)
            n_docs += 1
            n_bytes += len(line.encode())
    f.close()
    (out_dir / "planted.json").write_text(json.dumps(planted))
    return {"docs": n_docs, "bytes": n_bytes, "files": n_files, "planted_pairs": len(planted)}
