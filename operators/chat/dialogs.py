"""Dialogs from chat records: read, checked, and fitted to the context, each refusal with its reason.

A dialog is a list of `{role, content}` messages: an optional system message, then user and
assistant turns alternating, starting with the user (the structure Meta's `chat_completion`
accepts). A training dialog ends with an assistant turn; a prompt (or a preference pair's
context) ends with a user turn. Content may not contain the chat format's control strings,
which would let a data row forge turns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from model.chat_format import SPECIAL_TAGS, Message, encode_dialog
from model.tokenizer import Tokenizer

Ending = Literal["assistant", "user"]


class DialogRejected(ValueError):
    """A record that cannot become a dialog; `reason` is what the rejects file records."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def dialog_from_record(record: Mapping[str, Any], dialog_field: str, prompt_field: str, response_field: str | None,
                       system_field: str | None) -> list[Message]:
    """`record[dialog_field]` as given, or a dialog built from a prompt (and response) pair."""
    if record.get(dialog_field) is not None:
        dialog = record[dialog_field]
        if not isinstance(dialog, list) or not all(isinstance(m, Mapping) for m in dialog):
            raise DialogRejected("malformed_dialog", f"{dialog_field} is not a list of messages")
        return [dict(m) for m in dialog]  # type: ignore[misc]
    prompt = record.get(prompt_field)
    if prompt is None:
        raise DialogRejected("malformed_dialog", f"neither {dialog_field} nor {prompt_field} is set")
    dialog: list[Message] = []
    if system_field and record.get(system_field):
        dialog.append({"role": "system", "content": record[system_field]})
    dialog.append({"role": "user", "content": prompt})
    if response_field is not None:
        response = record.get(response_field)
        if response is None:
            raise DialogRejected("malformed_dialog", f"{response_field} is missing")
        dialog.append({"role": "assistant", "content": response})
    return dialog


def check_dialog(dialog: list[Message], ending: Ending) -> list[Message]:
    """The dialog with stripped contents, or DialogRejected naming what is wrong with it."""
    cleaned: list[Message] = []
    for i, message in enumerate(dialog):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str) or set(message) - {"role", "content"}:
            raise DialogRejected("malformed_dialog", f"message {i} is not a {{role, content}} with a known role")
        if not content.strip():
            raise DialogRejected("malformed_dialog", f"message {i} ({role}) is empty")
        if any(tag in content for tag in SPECIAL_TAGS):
            raise DialogRejected("control_strings", f"message {i} ({role}) contains one of {', '.join(SPECIAL_TAGS)}")
        cleaned.append({"role": role, "content": content.strip()})
    turns = cleaned[1:] if cleaned and cleaned[0]["role"] == "system" else cleaned
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if not turns or [m["role"] for m in turns] != expected:
        raise DialogRejected("roles_not_alternating",
                             f"roles {[m['role'] for m in cleaned]}; expected [system,] user, assistant, user, ...")
    if turns[-1]["role"] != ending:
        what = "a prompt" if ending == "user" else "a training dialog"
        raise DialogRejected("roles_not_alternating", f"{what} must end with a {ending} turn")
    return cleaned


def fit_to_context(tokenizer: Tokenizer, dialog: list[Message], context_tokens: int, extra_tokens: int = 0) -> list[Message]:
    """The dialog, with its earliest exchanges dropped (the system message kept) until its tokens plus
    `extra_tokens` (e.g. the longer of a preference pair's responses) fit `context_tokens`."""
    system = dialog[:1] if dialog[0]["role"] == "system" else []
    turns = dialog[len(system):]
    while turns:
        candidate = system + turns
        if len(encode_dialog(tokenizer, candidate).tokens) + extra_tokens <= context_tokens:
            return candidate
        if len(turns) <= 2:
            break
        turns = turns[2:]  # drop the oldest user/assistant exchange
    raise DialogRejected("too_long", f"longer than the context of {context_tokens} tokens even with only its last turn")
