"""Stage folders for data-stage tests: documents written as an upstream stage's output, the
`StageIO` a stage receives, and the rows its files really hold (counted here, not by the stage)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from operators.formats.documents import DOCUMENTS_SCHEMA, write_table
from operators.stage_io import InputRows, NullTracker, StageIO, Tracker


def write_documents(stage_dir: Path, shards: list[list[dict]]) -> Path:
    """Write `shards` as a stage output's documents/part-NNNNN.parquet; returns `stage_dir`."""
    for i, rows in enumerate(shards):
        full = [{"url": None, "metadata": "{}"} | row for row in rows]
        table = pa.Table.from_pylist(full, schema=DOCUMENTS_SCHEMA)
        write_table(table, stage_dir / "documents" / f"part-{i:05d}.parquet")
    return stage_dir


def stage_io(tmp_path: Path, stage: str, tracker: Tracker | None = None, **inputs: Path) -> StageIO:
    """A fresh, empty output folder `tmp_path/stage` and the inputs by role."""
    out = tmp_path / stage
    out.mkdir(parents=True)
    return StageIO(output_dir=out, inputs=inputs, stage=stage, tracker=tracker or NullTracker())


def read_parts(directory: Path) -> pa.Table:
    """All part-*.parquet shards of a documents/ or rejects/ folder, in order."""
    return pa.concat_tables(pq.read_table(p) for p in sorted(directory.glob("part-*.parquet")))


def rows_in_files(root: Path, prefix: str) -> int:
    """Rows held by the Parquet and Arrow IPC files whose path under `root` starts with `prefix`."""
    rows = 0
    for path in sorted(root.rglob("*")):
        if not path.relative_to(root).as_posix().startswith(prefix):
            continue
        if path.suffix == ".parquet":
            rows += pq.read_table(path).num_rows
        elif path.suffix == ".arrow":
            rows += pa.ipc.open_file(pa.memory_map(str(path))).read_all().num_rows
    return rows


def rows_by_prefix(root: Path, *prefixes: str) -> dict[str, int]:
    return {prefix: rows_in_files(root, prefix) for prefix in prefixes}


def all_documents_read(io: StageIO) -> InputRows:
    """What a stage that read every document of its `documents` input reports, counted from the files."""
    return InputRows("documents", "documents/", rows_in_files(io.input("documents"), "documents/"))
