"""Preference ratings: the paper's four levels and the margins of the ranking loss.

Annotators rate how much better the chosen response is (Llama 2 §3.2.1): significantly better,
better, slightly better, or negligibly better / unsure. The reward model's binary ranking loss
adds a margin m(r) that grows with the level (§3.2.2, eq. 2; values from Table 27), so pairs
that are clearly ordered are pushed further apart than near-ties.
"""

from __future__ import annotations

from typing import Literal

Level = Literal["significantly_better", "better", "slightly_better", "negligibly_better"]
LEVELS: tuple[Level, ...] = ("significantly_better", "better", "slightly_better", "negligibly_better")
MarginKind = Literal["none", "small", "large"]

# Llama 2 Table 27: margin per rating level, from "significantly better" to "negligibly better/unsure".
MARGINS: dict[MarginKind, dict[Level, float]] = {
    "none": dict.fromkeys(LEVELS, 0.0),
    "small": dict(zip(LEVELS, (1.0, 2 / 3, 1 / 3, 0.0))),
    "large": dict(zip(LEVELS, (3.0, 2.0, 1.0, 0.0))),
}

# Spellings a preference file may use for each level; anything else is refused naming the field.
_ALIASES: dict[str, Level] = {
    **{level: level for level in LEVELS},
    **{level.replace("_", " "): level for level in LEVELS},
    "negligibly better/unsure": "negligibly_better", "unsure": "negligibly_better",
}


def rating_level(raw: object, mapping: dict[str, Level] | None = None) -> Level | None:
    """The level a raw rating stands for (through `mapping` first, for a source's own scale), or None."""
    key = str(raw).strip().lower() if raw is not None else None
    if key is None:
        return None
    if mapping and key in {str(k).strip().lower() for k in mapping}:
        return {str(k).strip().lower(): v for k, v in mapping.items()}[key]
    return _ALIASES.get(key)


def margin(kind: MarginKind, level: Level) -> float:
    return MARGINS[kind][level]
