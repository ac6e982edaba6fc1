"""A full disk under a stage as one line: which stage, which path, how much space is left there.

A write that finds no space fails deep inside pyarrow, a Ray task or torch with `[Errno 28]` and,
from pyarrow, no path; the runner runs each stage inside `reported_as_disk_full`, which finds the
ENOSPC behind whatever reached it and raises `DiskFullError` instead (one line, exit code 2 from
the CLI). Nothing is half-published: the attempt was abandoned on its way out, as on any failure.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_NO_SPACE_TEXT = ("No space left on device", "[Errno 28]", "[errno 28]")


class DiskFullError(RuntimeError):
    """A stage ran out of disk space; its message names the stage, the path and the space left there."""


@contextmanager
def reported_as_disk_full(stage: str, where: Path) -> Iterator[None]:
    """Re-raise a failure caused by a full disk as `DiskFullError`; `where` stands for the path when the
    error names none (the stage's directory in the store)."""
    try:
        yield
    except Exception as err:
        full = no_space_error(err)
        if full is None:
            raise
        path = Path(full.filename) if full.filename else where
        raise DiskFullError(
            f"stage {stage}: no space left on the disk writing {path} ({_free_space(path)} free there); nothing was "
            "published: free some space (or point runtime.store / runtime.local_cache at a larger disk) and run the "
            "same command again"
        ) from err


def no_space_error(err: BaseException) -> OSError | None:
    """The 'no space left on device' error behind `err` (through causes, contexts and a Ray task's `cause`), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # ray.exceptions.RayTaskError keeps the task's exception here
        if isinstance(cause, BaseException):
            current = cause
            continue
        if isinstance(current, OSError) and (current.errno == errno.ENOSPC or
                                             any(text in str(current) for text in _NO_SPACE_TEXT)):
            return current
        current = current.__cause__ or current.__context__
    return None


def _free_space(path: Path) -> str:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if free < 2**20:
        return f"{free} bytes"
    return f"{free / 2**20:.1f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"
