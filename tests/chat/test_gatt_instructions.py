"""Ghost Attention's constraints: drawn reproducibly, and checked by a program where they can be."""

from __future__ import annotations

import random

import pytest

from model.chat_format import encode_prompt
from operators.chat.gatt_instructions import CHECKABLE, Instruction, adheres, instruction, training_instruction
from operators.chat.multiturn import fit_keeping_first


@pytest.mark.parametrize("rule, answer, expected", [
    (Instruction("language", "", "fr"), "Bonjour, je suis très heureux de vous aider avec cette question.", True),
    (Instruction("language", "", "fr"), "Hello, I am very happy to help you with this question.", False),
    (Instruction("emoji", ""), "😀 🐍 🎉", True),
    (Instruction("emoji", ""), "😀 python", False),
    (Instruction("word_limit", "", 5), "one two three four five", True),
    (Instruction("word_limit", "", 5), "one two three four five six", False),
    (Instruction("upper_case", ""), "USE A LIST, NOT A TUPLE.", True),
    (Instruction("upper_case", ""), "Use a list.", False),
    (Instruction("forbidden_word", "", "data"), "Store it in a file.", True),
    (Instruction("forbidden_word", "", "data"), "Store the Data in a file.", False),
])
def test_each_checkable_instruction_is_judged_by_the_answer(rule, answer, expected):
    assert adheres(answer, rule) is expected


def test_an_empty_answer_follows_nothing():
    assert not any(adheres("", Instruction(kind, "", 5 if kind == "word_limit" else "fr")) for kind in CHECKABLE)


def test_instructions_are_drawn_reproducibly_and_combined_as_configured():
    first = [training_instruction(random.Random(3), 1.0) for _ in range(5)]
    assert first == [training_instruction(random.Random(3), 1.0) for _ in range(5)]
    assert all(len(i) == 2 and i[0].kind != i[1].kind for i in first)
    assert all(len(training_instruction(random.Random(s), 0.0)) == 1 for s in range(10))
    assert instruction("word_limit", random.Random(0)).text.startswith("Answer in at most")


def test_a_long_dialog_keeps_its_first_exchange_and_its_latest_turns(chat_tokenizer):
    dialog = [{"role": "user", "content": "Always answer in upper case. the river"}]
    for i in range(12):
        dialog += [{"role": "assistant", "content": "data " * 10}, {"role": "user", "content": f"question {i}"}]
    fitted = fit_keeping_first(chat_tokenizer, dialog, context_tokens=120)
    assert fitted[0] == dialog[0] and fitted[-1] == dialog[-1]
    assert len(encode_prompt(chat_tokenizer, fitted)) <= 120 < len(encode_prompt(chat_tokenizer, dialog))
