"""Record formats of chat sources: the layouts public SFT and preference data come in, read into the
project's own (a dialog; a pair's context, chosen and rejected answers; a rating on the paper's four levels).

    record_format       kinds            a record
    project             all              {dialog | prompt [, response]}; {dialog | prompt, chosen, rejected, rating}
                                         (the source's configured field names)
    messages            dialog, prompt   {messages: [{role, content}, ...]}            OpenAI / TRL conversational
    hh_rlhf             preference       {chosen, rejected}: "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts
                                                                                       Anthropic HH-RLHF
    ultrafeedback       preference       {prompt, chosen, rejected: [messages], score_chosen, score_rejected}
                                                                                       UltraFeedback binarized
    trl_standard        preference       {prompt, chosen, rejected}: strings           TRL standard preference
    trl_conversational  preference       {[prompt: [messages]], chosen, rejected: [messages]}
                                                                                       TRL conversational preference

A pair given as two transcripts (HH-RLHF, UltraFeedback, TRL's implicit prompt) must differ only in its
last assistant turn: the turns the two share are the context. The rating is the source's `rating_field`
where a record has it; else the score difference score_chosen - score_rejected through `score_levels`;
else the source's `default_rating`. With `record_format: auto` (the default) each record's format is read
from its keys and value types, so a file may mix them; a record that fits none is refused as
`unknown_format`. Pure functions over records (dicts), no Ray: operators/chat/chat_sources.py calls them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.chat_format import Message
from operators.chat.dialogs import DialogRejected, dialog_from_record
from operators.chat.preferences import LEVELS, Level, rating_level

RecordFormat = Literal["auto", "project", "messages", "hh_rlhf", "ultrafeedback", "trl_standard",
                       "trl_conversational"]
FORMATS_OF_KIND: dict[str, tuple[RecordFormat, ...]] = {
    "dialog": ("project", "messages"),
    "prompt": ("project", "messages"),
    "preference": ("project", "hh_rlhf", "ultrafeedback", "trl_standard", "trl_conversational"),
}
MESSAGES_FIELD = "messages"
SCORE_FIELDS = ("score_chosen", "score_rejected")
# A turn marker of an HH-RLHF transcript: "\n\nHuman: " or "\n\nAssistant: " (or at the very start).
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class ScoreLevels(BaseModel):
    """How a scored pair is rated: the least score difference (score_chosen - score_rejected) of each level;
    a difference below `slightly_better` is negligibly_better."""

    model_config = ConfigDict(extra="forbid")

    significantly_better: float = Field(description="least difference rated significantly_better")
    better: float = Field(description="least difference rated better")
    slightly_better: float = Field(gt=0, description="least difference rated slightly_better (a tie is below it)")

    @model_validator(mode="before")
    @classmethod
    def _known_levels(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (unknown := sorted(set(data) - set(LEVELS[:3]))):
            raise ValueError(f"unknown level(s) {unknown}; the levels with a threshold are "
                             f"{', '.join(LEVELS[:3])} (below the last: negligibly_better)")
        return data

    @model_validator(mode="after")
    def _ordered(self) -> ScoreLevels:
        if not self.significantly_better > self.better > self.slightly_better:
            raise ValueError("score_levels must decrease: significantly_better > better > slightly_better "
                             f"(got {self.significantly_better}, {self.better}, {self.slightly_better})")
        return self

    def level(self, difference: float) -> Level:
        return next((lv for lv in LEVELS[:3] if difference >= getattr(self, lv)), "negligibly_better")


class SourceFields(Protocol):
    """What these functions read of a source's config (operators/chat/chat_sources.py's ChatSourceConfig)."""

    kind: str
    record_format: RecordFormat
    dialog_field: str
    prompt_field: str
    response_field: str
    system_field: str
    chosen_field: str
    rejected_field: str
    rating_field: str
    rating_map: dict[str, Level]
    default_rating: Level | None
    score_levels: ScoreLevels | None


@dataclass(frozen=True)
class Pair:
    """A preference pair as read: the context (ending with the user) and the two answers, unchecked."""

    context: list[Message]
    chosen: Any
    rejected: Any


def check_record_format(kind: str, record_format: RecordFormat, default_rating: Level | None,
                        score_levels: ScoreLevels | None) -> None:
    """A source's format settings that cannot work together, as a ValueError naming the fields."""
    if record_format != "auto" and record_format not in FORMATS_OF_KIND[kind]:
        raise ValueError(f"record_format {record_format!r} is not a {kind} format; a {kind} source takes "
                         f"{', '.join(('auto', *FORMATS_OF_KIND[kind]))}")
    if kind != "preference" and (default_rating is not None or score_levels is not None):
        raise ValueError(f"default_rating and score_levels rate preference pairs; a {kind} source has none")
    if record_format == "ultrafeedback" and score_levels is None and default_rating is None:
        raise ValueError("record_format 'ultrafeedback' rates pairs by their scores: set score_levels (e.g. "
                         "{significantly_better: 3, better: 2, slightly_better: 1}) or a default_rating")


def format_of(record: Mapping[str, Any], source: SourceFields) -> RecordFormat:
    """The source's record_format, or for `auto` the one the record's keys and value types say."""
    if source.record_format != "auto":
        return source.record_format
    found = _detect(record, source)
    if found is None:
        raise DialogRejected("unknown_format", f"fits none of the {source.kind} formats "
                             f"({', '.join(FORMATS_OF_KIND[source.kind])}); keys: {sorted(record)}")
    return found


def _detect(record: Mapping[str, Any], source: SourceFields) -> RecordFormat | None:
    def has(field: str) -> bool:
        return record.get(field) is not None

    if source.kind != "preference":
        if has(source.dialog_field) or has(source.prompt_field) or has(source.response_field):
            return "project"
        return "messages" if has(MESSAGES_FIELD) else None
    chosen, rejected = record.get(source.chosen_field), record.get(source.rejected_field)
    prompt = record.get(source.prompt_field)
    if isinstance(chosen, list) and isinstance(rejected, list):
        return "ultrafeedback" if isinstance(prompt, str) else "trl_conversational"
    transcript = isinstance(chosen, str) and _TURN.match(chosen.lstrip(" \n"))
    if transcript and prompt is None and not has(source.dialog_field):
        return "hh_rlhf"
    return "project" if chosen is not None or rejected is not None else None  # trl_standard reads as project


def dialog_of(record: Mapping[str, Any], source: SourceFields) -> list[Message]:
    """A dialog source's dialog, or a prompt source's prompt, as given (checked by the caller)."""
    if format_of(record, source) == "messages":
        return _messages(record.get(MESSAGES_FIELD), MESSAGES_FIELD)
    response = source.response_field if source.kind == "dialog" else None
    return dialog_from_record(record, source.dialog_field, source.prompt_field, response, source.system_field)


def pair_of(record: Mapping[str, Any], source: SourceFields) -> Pair:
    """A preference record's context and answers, as given (checked by the caller)."""
    form = format_of(record, source)
    chosen, rejected = record.get(source.chosen_field), record.get(source.rejected_field)
    prompt = record.get(source.prompt_field)
    if form in ("project", "trl_standard"):
        if form == "trl_standard" and not isinstance(prompt, str):
            raise DialogRejected("malformed_dialog", f"{source.prompt_field} is not a string (trl_standard)")
        context = dialog_from_record(record, source.dialog_field, source.prompt_field, None, source.system_field)
        return Pair(context, chosen, rejected)
    if form == "hh_rlhf":
        return _split(_transcript(chosen, source.chosen_field), _transcript(rejected, source.rejected_field), [])
    chosen, rejected = _messages(chosen, source.chosen_field), _messages(rejected, source.rejected_field)
    if form == "ultrafeedback":
        if not isinstance(prompt, str):
            raise DialogRejected("malformed_dialog", f"{source.prompt_field} is not a string (ultrafeedback)")
        # Its transcripts repeat the prompt as their first turn; where they hold the answer alone, it is the context.
        opening = [] if len(chosen) > 1 else [{"role": "user", "content": prompt}]
        return _split(chosen, rejected, opening)
    return _split(chosen, rejected, [] if prompt is None else _messages(prompt, source.prompt_field))


def rating_of(record: Mapping[str, Any], source: SourceFields) -> Level:
    """The pair's level: its rating field, else its scores through score_levels, else the default_rating."""
    raw = record.get(source.rating_field)
    if raw is not None:
        level = rating_level(raw, source.rating_map)
        if level is None:
            raise DialogRejected("invalid_rating", f"{source.rating_field}={raw!r} is not one of the four levels "
                                 "(or the source's rating_map)")
        return level
    if source.score_levels is not None and any(record.get(f) is not None for f in SCORE_FIELDS):
        return source.score_levels.level(_score_difference(record))
    if source.default_rating is not None:
        return source.default_rating
    raise DialogRejected("invalid_rating", f"no {source.rating_field} (nor scores rated by score_levels), and the "
                         "source sets no default_rating")


def _score_difference(record: Mapping[str, Any]) -> float:
    scores = [record.get(f) for f in SCORE_FIELDS]
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise DialogRejected("invalid_rating", f"{SCORE_FIELDS[0]}={scores[0]!r}, {SCORE_FIELDS[1]}={scores[1]!r}: "
                             "scores must be two finite numbers")
    difference = scores[0] - scores[1]
    if difference < 0:
        raise DialogRejected("chosen_scored_lower", f"the chosen answer scores {scores[0]}, the rejected {scores[1]}")
    return difference


def _messages(value: Any, field: str) -> list[Message]:
    """An OpenAI / TRL message list as [{role, content}]: text parts joined, other keys (name, weight) left out."""
    if not isinstance(value, list) or not all(isinstance(m, Mapping) for m in value):
        raise DialogRejected("malformed_dialog", f"{field} is not a list of messages")
    return [{"role": m.get("role"), "content": _text(m.get("content"))} for m in value]  # type: ignore[misc]


def _text(content: Any) -> Any:
    """Content as a string; a list of parts when every part is text (else left for the dialog check to refuse)."""
    if isinstance(content, list) and content and all(
            isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return content


def _transcript(value: Any, field: str) -> list[Message]:
    """An HH-RLHF transcript as messages: text before the first turn marker is an error, not a turn."""
    if not isinstance(value, str):
        raise DialogRejected("malformed_dialog", f"{field} is not a transcript string")
    parts = _TURN.split(value.lstrip(" \n"))
    if parts[0].strip() or len(parts) < 3:
        raise DialogRejected("malformed_dialog", f"{field} does not start with a Human: or Assistant: turn")
    return [{"role": _ROLES[who], "content": text} for who, text in zip(parts[1::2], parts[2::2])]  # type: ignore[misc]


def _split(chosen: list[Message], rejected: list[Message], opening: list[Message]) -> Pair:
    """A pair from two transcripts that share all turns but their last answers (after `opening`, the prompt)."""
    if not all(t and t[-1].get("role") == "assistant" for t in (chosen, rejected)):
        raise DialogRejected("malformed_dialog", "chosen and rejected must each end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DialogRejected("pair_context_differs", "chosen and rejected differ before their last assistant turn")
    return Pair(opening + chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])
