"""Whether an invocation still has its tracking server; once it does not, the work goes on without it.

`tracking.connect` checked the server before anything ran. When a call to it fails later and the
server does not answer its health check either, the link is lost: one warning names the server and
what was being recorded, no further call is made (each would wait out its timeouts), the stages run
and publish as they would have, and the runner ends the invocation with `TrackingLost`. The next
`llama2 run` against the server completes the record: infra/run_owner.py ends the runs left
RUNNING, and each cache hit records its producing run from the manifest (infra/lineage_repair.py).

A call that fails while the server answers is no outage: its error is raised (a bug of ours, or a
request MLflow refuses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from infra.tracking import answers, redact
from infra.tracking_outbox import first_line

log = logging.getLogger(__name__)

T = TypeVar("T")


class TrackingLost(RuntimeError):
    """Every selected stage finished and was published, but the tracking server was lost on the way,
    so MLflow lacks their record until the next run; `outcomes` are the runner's StageOutcomes."""

    def __init__(self, message: str, outcomes: Sequence[Any]):
        super().__init__(message)
        self.outcomes = list(outcomes)


class TrackingLink:
    def __init__(self, uri: str):
        self.uri = uri
        self.lost_while: str | None = None  # what was being recorded when the server went away

    @property
    def lost(self) -> bool:
        return self.lost_while is not None

    def attempt(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`call(*args, **kwargs)`, unless the server is lost; None when it is, or is found lost now."""
        if self.lost:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if answers(self.uri):
                raise
            self.lost_while = what
            log.warning("the MLflow tracking server at %s stopped answering while %s (%s); the run goes on without "
                        "MLflow and the next `llama2 run` records what is missing", redact(self.uri), what,
                        first_line(err))
            return None

    def describe(self) -> str:
        """'the MLflow tracking server at URI was lost while <what>' (the error was logged when it happened)"""
        return f"the MLflow tracking server at {redact(self.uri)} was lost while {self.lost_while}"
