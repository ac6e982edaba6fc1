"""Which candidate an annotator rates next.

Candidates are offered in one fixed shuffled order. A share of them (``double_share``, chosen by a
hash of the id, so the same ones whatever the order of requests) is meant for two annotators, to
measure agreement as the paper does; the rest for one. A candidate shown to an annotator is held
for them for ``hold_seconds``, so two annotators working at once are not given the same pair to
rate twice; a hold that runs out (the annotator left) frees it for the next.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Sequence


def fraction_of(text: str) -> float:
    """A number in [0, 1) fixed by ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


class Assignments:
    def __init__(self, candidate_ids: Sequence[str], double_share: float, seed: int, hold_seconds: float,
                 rated_by: Callable[[str], set[str]], clock: Callable[[], float] = time.monotonic):
        self.order = list(candidate_ids)
        random.Random(seed).shuffle(self.order)
        self.doubled = {cid for cid in self.order if fraction_of(f"{seed}/{cid}") < double_share}
        self.hold_seconds = hold_seconds
        self.rated_by = rated_by
        self.clock = clock
        self._holds: dict[str, dict[str, float]] = {}  # candidate -> annotator -> when it was shown
        self._lock = threading.Lock()

    def wanted(self, candidate_id: str) -> int:
        """How many annotators rate this candidate."""
        return 2 if candidate_id in self.doubled else 1

    def next_for(self, annotator: str) -> str | None:
        """The candidate ``annotator`` rates next (the one they hold, if any), or None when none is left for them."""
        now = self.clock()
        with self._lock:
            for cid in self.order:
                raters = self.rated_by(cid)
                if annotator in raters:
                    continue
                holds = self._holds.setdefault(cid, {})
                if annotator in holds and now - holds[annotator] < self.hold_seconds:
                    return cid
                others = {a for a, since in holds.items() if a != annotator and now - since < self.hold_seconds}
                if len(raters) + len(others) < self.wanted(cid):
                    holds[annotator] = now
                    return cid
        return None

    def release(self, candidate_id: str, annotator: str) -> None:
        """The annotator rated it: the hold is no longer needed."""
        with self._lock:
            self._holds.get(candidate_id, {}).pop(annotator, None)
