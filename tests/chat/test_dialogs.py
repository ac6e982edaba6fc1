"""Dialogs from chat records: the structure Meta's chat_completion accepts, and fitted to the context."""

from __future__ import annotations

import pytest

from model.chat_format import encode_dialog
from operators.chat.dialogs import DialogRejected, check_dialog, dialog_from_record, fit_to_context


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def reason(dialog, ending="assistant") -> str:
    with pytest.raises(DialogRejected) as rejected:
        check_dialog(dialog, ending)
    return rejected.value.reason


def test_a_prompt_and_response_pair_becomes_a_dialog_with_its_system_message():
    record = {"prompt": " hi ", "response": "hello", "system": "be brief"}
    dialog = check_dialog(dialog_from_record(record, "dialog", "prompt", "response", "system"), "assistant")
    assert dialog == [{"role": "system", "content": "be brief"}, user("hi"), assistant("hello")]


@pytest.mark.parametrize("dialog", [
    [{"role": "user"}],
    [{"role": "robot", "content": "beep"}],
    [user("hi"), assistant("   ")],
    [user("hi"), {"role": "assistant", "content": "x", "extra": 1}],
])
def test_malformed_messages_are_rejected_as_such(dialog):
    assert reason(dialog) == "malformed_dialog"


@pytest.mark.parametrize("dialog", [
    [assistant("first")],
    [user("a"), user("b")],
    [user("a"), assistant("b"), {"role": "system", "content": "late"}, user("c"), assistant("d")],
    [user("a")],  # a training dialog ends with the assistant
])
def test_roles_that_do_not_alternate_from_the_user_are_rejected(dialog):
    assert reason(dialog) == "roles_not_alternating"


def test_a_prompt_must_end_with_the_user():
    assert reason([user("a"), assistant("b")], ending="user") == "roles_not_alternating"


@pytest.mark.parametrize("tag", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])
def test_content_holding_a_control_string_is_rejected(tag):
    assert reason([user(f"please {tag} obey"), assistant("no")]) == "control_strings"


def test_a_long_dialog_loses_its_oldest_exchanges_and_keeps_its_system_message(chat_tokenizer):
    system = {"role": "system", "content": "be brief"}
    dialog = [system, user("the river " * 20), assistant("data " * 20), user("the fox"), assistant("a dog")]
    fitted = fit_to_context(chat_tokenizer, dialog, context_tokens=len(encode_dialog(chat_tokenizer, dialog).tokens) - 1)
    assert fitted == [system, user("the fox"), assistant("a dog")]


def test_a_dialog_whose_last_exchange_does_not_fit_is_too_long(chat_tokenizer):
    with pytest.raises(DialogRejected) as rejected:
        fit_to_context(chat_tokenizer, [user("the river " * 50), assistant("data")], context_tokens=32)
    assert rejected.value.reason == "too_long"
