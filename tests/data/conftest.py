"""Fixtures of the data-stage tests: the shipped demo corpora as documents rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

PYTHON_DOCS = "python-docs-3.11.parquet"  # 71 pages of the Python 3.11 docs, prose mixed with code


@pytest.fixture(scope="session")
def python_docs(demo_data: Path) -> list[dict]:
    """The Python docs pages as documents rows {id, source, url, text} (copy a row before changing it)."""
    return pq.read_table(demo_data / PYTHON_DOCS, columns=["id", "source", "url", "text"]).to_pylist()
