"""One raw input record → one documents row, or one rejects row with the reason.

Reasons: invalid_json, invalid_utf8, blank_line, wrong_type (the record is not an object, or
its id / text / url field has a type that is not allowed), missing_text (absent or null),
empty_text (only whitespace), oversized (text over `max_doc_bytes` UTF-8 bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import xxhash

from operators.data.readers import Broken, RawRecord


@dataclass(frozen=True)
class Fields:
    text: str
    id: str
    url: str


def derived_id(source: str, relpath: str, location: str) -> str:
    """A stable id for a record without one: where it is, not what it says.

    Hashing the location (source, path relative to the configured input, byte offset / row)
    rather than the text keeps two identical records as two documents (merging them is dedup's
    job, and leaves a trace there) and keeps a record's id when its text is corrected.
    """
    return xxhash.xxh3_64_hexdigest(f"{source}\x00{relpath}\x00{location}".encode())


def to_row(raw: RawRecord, source: str, fields: Fields, max_doc_bytes: int) -> tuple[dict, str | None]:
    """(row, None) for a good record, (reject row, reason) for a bad one."""
    fallback_id = derived_id(source, raw.relpath, raw.location)
    value = raw.value
    if isinstance(value, Broken):
        return {"id": fallback_id, "source": source, "reason": value.reason, "record": value.text or None}, value.reason

    def reject(reason: str, id_: str = fallback_id) -> tuple[dict, str]:
        return {"id": id_, "source": source, "reason": reason, "record": _json_text(value)}, reason

    id_ = value.get(fields.id)
    if id_ is None or id_ == "":
        id_ = fallback_id
    elif isinstance(id_, int) and not isinstance(id_, bool):
        id_ = str(id_)
    elif not isinstance(id_, str) or not _encodable(id_):
        return reject("wrong_type")
    text = value.get(fields.text)
    if text is None:
        return reject("missing_text", id_)
    if isinstance(text, bytes):  # a Parquet binary column
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return reject("invalid_utf8", id_)
    if not isinstance(text, str):
        return reject("wrong_type", id_)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from "\ud800"-style JSON escapes
        return reject("invalid_utf8", id_)
    if not text.strip():
        return reject("empty_text", id_)
    if size > max_doc_bytes:
        return reject("oversized", id_)
    url = value.get(fields.url)
    if url is not None and (not isinstance(url, str) or not _encodable(url)):
        return reject("wrong_type", id_)
    metadata = {k: v for k, v in value.items() if k not in (fields.id, fields.text, fields.url)}
    return {"id": id_, "source": source, "url": url, "text": text, "metadata": _json_text(metadata)}, None


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_text(value: object) -> str:
    """JSON text that is valid UTF-8: non-ASCII kept as is, lone surrogates escaped."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if _encodable(text) else json.dumps(value, ensure_ascii=True, default=repr)
