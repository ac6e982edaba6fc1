"""Rebuild the demo corpus shipped in pipelines/demo_data/ from the normalized JSONL corpora.

The inputs are the Django 4.2/5.2 and Python 3.11 documentation as normalized in the project's
research data (see pipelines/demo_data/PROVENANCE.md for how those were obtained from PyPI and
Debian). Three files in three formats, so the demo exercises every ingest reader, and two Django
releases, so dedup has real exact and near duplicates to remove.

    python scripts/build_demo_corpus.py ../shared/data pipelines/demo_data
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

DJANGO_SECTIONS = {"faq", "howto", "intro", "internals", "releases", "misc"}
PYDOCS_SECTIONS = {"tutorial", "howto", "faq", "reference", "using", "extending"}


def django_records(corpus: Path, version: str) -> list[dict]:
    records = []
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["version"] == version and doc["path"].split("/")[1] in DJANGO_SECTIONS:
                records.append(doc)
    return records


def write_jsonl(records: list[dict], path: Path) -> None:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0))
    else:
        path.write_bytes(zstandard.ZstdCompressor(level=19).compress(payload))


def write_pydocs(corpus: Path, path: Path) -> None:
    rows = []
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["path"].split("/")[0] in PYDOCS_SECTIONS:
                page = doc["path"].removesuffix(".rst") + ".html"
                doc["url"] = f"https://docs.python.org/3.11/{page}"
                rows.append(doc)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")


def main(shared_data: Path, out: Path) -> None:
    django = shared_data / "django-docs-3versions" / "django-docs-3versions.jsonl"
    write_jsonl(django_records(django, "4.2.27"), out / "django-docs-4.2.jsonl.gz")
    write_jsonl(django_records(django, "5.2.19"), out / "django-docs-5.2.jsonl.zst")
    write_pydocs(shared_data / "pydocs-3.11" / "pydocs-3.11.jsonl", out / "python-docs-3.11.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
