"""SIGINT and SIGTERM end a `llama2` command the same way, where it stands: as Ctrl-C.

Within `interrupts()` both raise KeyboardInterrupt in the main thread, so the runs end KILLED and
tagged, nothing unfinished is published, and the CLI exits 130 (SIGINT) or 143 (SIGTERM). Which
signal arrived is remembered here rather than in the exception: Ray's blocking calls turn whatever
a handler raises into a plain KeyboardInterrupt.

Ray replaces the handlers. `ray.init` installs SIGTERM handlers that tear its processes down and
call `sys.exit` wherever the driver is (the process died with exit 134 and a C++ stack dump), so
`reclaim()` puts ours back after it; Ray Train's `fit` installs a SIGINT handler of its own, which
operators/training/fit.py undoes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)

_active = False
_received: signal.Signals | None = None


@contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt while inside; the previous handlers come back after.
    Only the main thread receives signals: elsewhere this changes nothing."""
    global _active, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    _active, _received = True, None
    _install()
    try:
        yield
    finally:
        _active = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def reclaim() -> None:
    """Inside `interrupts()`, put its handlers back where a library replaced them (Ray's start-up)."""
    if _active and threading.current_thread() is threading.main_thread():
        _install()


def received() -> str:
    """The name of the signal that interrupted: SIGTERM if one arrived, else SIGINT (which is what a
    KeyboardInterrupt stands for)."""
    return (_received or signal.SIGINT).name


def exit_code() -> int:
    """The shell's code for a process a signal ended: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(_received or signal.SIGINT)


def _install() -> None:
    for signum in HANDLED:
        signal.signal(signum, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = _received or signal.Signals(signum)  # the first one is why the run stopped
    raise KeyboardInterrupt(signal.Signals(signum).name)
