"""A published shard that cannot be read, as one line naming the file and how to make it again.

A truncated or overwritten Parquet / Arrow file makes pyarrow raise `ArrowInvalid: Not an Arrow
file`, `Parquet magic bytes not found` or a decompression error, naming no file. Readers of an
upstream output decode inside `decoding(path)` (or iterate through `decoded(path, ...)`), which
re-raises such an error as `DamagedShardError`: a `StageInputError`, so the CLI prints one line,
exit code 2, also when a Ray task raised it. The pipeline and stage that made the file come from
the manifest of the output it belongs to.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from operators.stage_io import StageInputError

T = TypeVar("T")
_END = object()


class DamagedShardError(StageInputError):
    """An upstream output's file cannot be decoded: it changed after it was published."""


@contextmanager
def decoding(path: Path | str) -> Iterator[None]:
    """Re-raise a decode error of `path` in the block as `DamagedShardError` (a full disk stays what it is)."""
    try:
        yield
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise
        raise DamagedShardError(_message(Path(path), err)) from err


def decoded(path: Path | str, items: Iterable[T]) -> Iterator[T]:
    """`items` decoded lazily from `path` (record batches, rows), each step inside `decoding(path)`."""
    iterator = iter(items)
    while True:
        with decoding(path):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item


def _message(path: Path, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    made_by = _producer(path)
    if made_by is None:
        remedy = "make it again with the stage that wrote it"
    else:
        pipeline, stage = made_by
        remedy = (f"`llama2 verify {pipeline} {stage}` checks that output and `llama2 run {pipeline} --from {stage} "
                  "--force` makes it again")
    return f"cannot read {path} ({type(err).__name__}: {reason}): the file is damaged or gone; {remedy}"


def _producer(path: Path) -> tuple[str, str] | None:
    """(pipeline, stage) from the manifest of the published output holding `path`, if there is one."""
    for directory in path.parents:
        manifest = directory / "manifest.json"
        if manifest.is_file():
            try:
                made = json.loads(manifest.read_text(encoding="utf-8"))
                return made["pipeline"], made["stage"]
            except (ValueError, KeyError, TypeError):
                return None
    return None
