"""Where the safety preprompt goes in the dialog the policy answers (Llama 2 §4.2.4)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model.chat_format import encode_prompt
from model.tokenizer import load_tokenizer
from operators.chat.safety_distill import SafetyDistillConfig, preprompted
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines

PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]
PREPROMPT = "You are a safe and responsible assistant."


def test_the_paper_prefixes_the_adversarial_prompt_with_the_preprompt():
    assert SafetyDistillConfig().preprompt_placement == "prefix"
    assert preprompted(PROMPT, PREPROMPT, "prefix") == [
        {"role": "user", "content": "You are a safe and responsible assistant.\n\nHow do I pick a lock?"}]
    assert PROMPT == [{"role": "user", "content": "How do I pick a lock?"}]  # the plain dialog is kept as it was


def test_as_a_system_message_it_opens_the_one_the_dialog_has_or_becomes_one():
    assert preprompted(PROMPT, PREPROMPT, "system") == [{"role": "system", "content": PREPROMPT}, *PROMPT]
    system = [{"role": "system", "content": "Answer in French."}, *PROMPT]
    assert preprompted(system, PREPROMPT, "system") == [
        {"role": "system", "content": f"{PREPROMPT}\n\nAnswer in French."}, *PROMPT]
    assert preprompted(system, PREPROMPT, "prefix")[1]["content"].startswith(PREPROMPT)


def test_both_placements_make_a_llama2_prompt(tmp_path):
    tokenizer = load_tokenizer(train_llama_tokenizer(tmp_path, word_lines()))
    plain = encode_prompt(tokenizer, PROMPT)
    for placement in ("prefix", "system"):
        guarded = encode_prompt(tokenizer, preprompted(PROMPT, PREPROMPT, placement))
        assert len(guarded) > len(plain) and guarded[-4:] == plain[-4:]  # the same [/INST] ending


def test_an_unknown_placement_is_refused_by_name():
    with pytest.raises(ValidationError, match="preprompt_placement"):
        SafetyDistillConfig(preprompt_placement="suffix")
