"""A batch's statistics, for the page that shows them: progress, the rating distribution per task and
level (the paper's Table 26 view of a batch), the safety labels, and agreement where two annotators
rated the same pair."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from operators.annotate.store import RATING_LEVELS, SAFETY_LABELS, TASKS


def batch_statistics(snapshot: Mapping[str, Mapping[str, Mapping[str, Any]]], total: int) -> dict[str, Any]:
    """``snapshot``: candidate -> annotator -> rating line (RatingsFile.snapshot); ``total``: candidates in the round."""
    lines = [line for per_annotator in snapshot.values() for line in per_annotator.values()]
    levels = Counter((line.get("kind"), line.get("rating")) for line in lines)
    shared = [list(per.values()) for per in snapshot.values() if len(per) >= 2]
    same_answer = sum(len({line.get("preferred_answer") for line in group}) == 1 for group in shared)
    same_level = sum(len({(line.get("preferred_answer"), line.get("rating")) for line in group}) == 1
                     for group in shared)
    return {
        "candidates": total,
        "rated": sum(1 for per in snapshot.values() if per),
        "ratings": len(lines),
        "per_annotator": dict(sorted(Counter(str(line.get("annotator")) for line in lines).items())),
        "levels": {task: {level: levels[(task, level)] for level in RATING_LEVELS} for task in TASKS},
        "safety_labels": {label: sum(line.get("safety_label") == label for line in lines) for label in SAFETY_LABELS},
        "doubly_rated": len(shared),
        "agreement_answer": same_answer / len(shared) if shared else None,
        "agreement_answer_and_level": same_level / len(shared) if shared else None,
    }
