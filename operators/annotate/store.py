"""Round k's ratings file, the one `preferences_v{k}` reads: one JSON line per rating, in the project's
preference fields (candidate_id, dialog, chosen, rejected, rating, kind) plus who rated it, when, which
answer they preferred and, for safety, the paper's three-way label (§3.2.1).

A rating counts as saved once its line is on disk: it is written whole with one ``write`` under an
exclusive ``flock`` (another annotation server on the same file, or a user's own tool, appends
between whole lines, never inside one), then fsynced, and only then does the page say "saved". A
server killed at any point loses nothing it acknowledged; a line cut short by the kill was never
acknowledged, is left where it is for `preferences_v{k}` to refuse with its reason, and the next line
starts on a line of its own. One annotator rates a candidate once: a second submission of the
same pair (a reload, a double click) is answered "already saved" and not written again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RATING_LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")  # §3.2.1's four
TASKS = ("helpfulness", "safety")
SAFETY_LABELS = {  # §3.2.1: the safety label of a pair, asked in the safety stage
    "chosen_safe_other_not": "the preferred answer is safe and the other is not",
    "both_safe": "both answers are safe",
    "both_unsafe": "both answers are unsafe",
}
UNNAMED = "(no annotator)"  # a line written by another tool, without an annotator field


@dataclass(frozen=True)
class Rating:
    """One annotator's judgement of one candidate: which answer ("a" or "b", the candidate's own names)
    is better, by how much, for which task, and the safety label when the task is safety."""

    candidate_id: str
    annotator: str
    preferred: str
    rating: str
    task: str
    safety_label: str | None


class RatingsFile:
    """The ratings on disk and who rated what; safe for the threads of one server and across processes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.by_candidate: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # candidate -> annotator -> line
        self.unreadable = 0
        if path.exists():
            self._read_existing()

    def _read_existing(self) -> None:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.unreadable += 1
                continue
            if isinstance(record, dict) and record.get("candidate_id") is not None:
                annotator = str(record.get("annotator") or UNNAMED)
                self.by_candidate[str(record["candidate_id"])].setdefault(annotator, record)
        if self.unreadable:
            log.warning("%s: %d lines are not JSON (cut short by a crash?); preferences read them as rejects",
                        self.path, self.unreadable)

    def annotators_of(self, candidate_id: str) -> set[str]:
        with self._lock:
            return set(self.by_candidate.get(candidate_id, {}))

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """candidate -> annotator -> the line they wrote, as it is now."""
        with self._lock:
            return {cid: dict(lines) for cid, lines in self.by_candidate.items()}

    def save(self, rating: Rating, candidate: Mapping[str, Any]) -> bool:
        """Append ``rating`` of ``candidate`` (a CANDIDATES_SCHEMA row) and fsync it; False when this annotator
        has already rated this candidate (nothing written)."""
        record = _line(rating, candidate)
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if rating.annotator in self.by_candidate.get(rating.candidate_id, {}):
                return False
            self._append(data)
            self.by_candidate[rating.candidate_id][rating.annotator] = record
        return True

    def _append(self, data: bytes) -> None:
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut short by a crash: start a new one
                data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes (disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        if created:  # the new file's name is durable too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def _line(rating: Rating, candidate: Mapping[str, Any]) -> dict[str, Any]:
    other = "b" if rating.preferred == "a" else "a"
    return {
        "id": f"{rating.candidate_id}/{rating.annotator}",
        "candidate_id": rating.candidate_id,
        "dialog": json.loads(candidate["dialog"]),
        "chosen": candidate[f"answer_{rating.preferred}"],
        "rejected": candidate[f"answer_{other}"],
        "rating": rating.rating,
        "kind": rating.task,
        "safety_label": rating.safety_label,
        "preferred_answer": rating.preferred,
        "annotator": rating.annotator,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
