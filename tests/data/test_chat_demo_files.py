"""The chat demo data shipped in pipelines/demo_data/chat/ (built by scripts/build_chat_demo.py):
well-formed, licence-clean, with the held-out RLHF prompts kept out of every training file, and a
round-2 batch that rates exactly the demo's round-2 candidates."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from operators.chat.chat_sources import heldout_split
from operators.chat.dialogs import check_dialog
from operators.chat.preference_candidates import candidate_id
from operators.chat.preferences import LEVELS
from pipelines.chat import CHAT
from pipelines.config_loader import load_config

BATCH = "preferences_v2.jsonl"
FILES = ("faq_dialogs.jsonl", "faq_multiturn.jsonl", "helpfulness_pairs.jsonl", "safety_pairs.jsonl", "prompts.jsonl",
         BATCH)
FAQ_LICENSES = {"python_faq": "PSF-2.0", "django_faq": "BSD-3-Clause", "sqlite_faq": "public-domain"}
DIALOG_CHARS = 1600  # ~512 tokens of the demo's 8k-piece tokenizer


@pytest.fixture(scope="module")
def chat(demo_data: Path) -> dict[str, list[dict]]:
    """Every shipped chat file, parsed: {file name: rows}."""
    return {name: [json.loads(line) for line in (demo_data / "chat" / name).read_text(encoding="utf-8").splitlines()]
            for name in FILES}


def dialog_chars(row: dict) -> int:
    if "dialog" in row:
        return sum(len(m["content"]) for m in row["dialog"])
    return len(row["prompt"]) + max(len(row.get(k, "")) for k in ("response", "chosen", "rejected"))


@pytest.mark.parametrize("name", FILES)
def test_ids_are_unique(chat, name):
    ids = [row["id"] for row in chat[name]]
    assert ids and len(ids) == len(set(ids))


@pytest.mark.parametrize("name", FILES)
def test_every_row_names_its_license_and_origin(chat, name):
    assert all(row["license"] and row["origin"] for row in chat[name])


@pytest.mark.parametrize("name", ("faq_dialogs.jsonl", "faq_multiturn.jsonl", "helpfulness_pairs.jsonl", BATCH))
def test_faq_text_comes_only_from_permissively_licensed_parts(chat, name):
    for row in chat[name]:
        parts = {i.split("/")[0] for i in row.get("faq_ids") or [row.get("faq_id", row["id"])]}
        assert parts <= set(FAQ_LICENSES), f"{row['id']} copies {parts - set(FAQ_LICENSES)}"
        assert {FAQ_LICENSES[part] for part in parts} == {row["license"]}, row["id"]


@pytest.mark.parametrize("name", ("helpfulness_pairs.jsonl", "safety_pairs.jsonl", BATCH))
def test_preference_pairs_have_a_paper_rating_and_distinct_answers(chat, name):
    for row in chat[name]:
        assert row["rating"] in LEVELS, row["id"]
        assert row["chosen"].strip() != row["rejected"].strip(), row["id"]


def test_helpfulness_pairs_use_each_prompt_at_most_twice(chat):
    assert max(Counter(row["prompt"] for row in chat["helpfulness_pairs.jsonl"]).values()) <= 2


def test_the_off_topic_answer_is_as_short_as_a_truncated_one(chat):
    """The widest level loses everything the `better` level's truncation loses (at most three
    quarters of the right answer are kept), and its topic too."""
    widest = [row for row in chat["helpfulness_pairs.jsonl"] if row["construction"] == "other_answer_cut"]
    assert widest and all(row["rating"] == "significantly_better" for row in widest)
    assert all(len(row["rejected"]) <= 0.75 * len(row["chosen"]) for row in widest), \
        [row["id"] for row in widest if len(row["rejected"]) > 0.75 * len(row["chosen"])]


def test_held_out_prompts_are_in_no_training_file(chat):
    held_out = {row["prompt"] for row in chat["prompts.jsonl"] if not row["is_safety"]}
    trained = {row["prompt"] for row in chat["faq_dialogs.jsonl"] + chat["helpfulness_pairs.jsonl"]}
    trained |= {m["content"] for row in chat["faq_multiturn.jsonl"] for m in row["dialog"] if m["role"] == "user"}
    assert held_out and not held_out & trained


@pytest.fixture(scope="module")
def demo_config():
    return load_config(CHAT.config_model, "chat", None, default_file=CHAT.default_config)


def test_the_round_2_batch_rates_every_round_2_candidate_of_the_demo_and_only_those(chat, demo_config, demo_data):
    """The candidates are the first max_prompts prompts on the train side of the chat data's split."""
    split = demo_config.chat_data
    train = [row for row in chat["prompts.jsonl"]
             if heldout_split(row["prompt"], split.seed, split.heldout_fraction) == "train"]
    candidates = {candidate_id(2, row["id"]): row["prompt"]
                  for row in train[: demo_config.rlhf.batches.candidates.max_prompts]}
    assert {row["candidate_id"] for row in chat[BATCH]} == set(candidates)
    assert all(row["prompt"] == candidates[row["candidate_id"]] for row in chat[BATCH])
    [source] = demo_config.rlhf.rounds[1].preferences
    assert [Path(p).resolve() for p in source.paths] == [(demo_data / "chat" / BATCH).resolve()]


def test_the_round_2_batch_asks_no_evaluation_prompt(chat, demo_config):
    split = demo_config.chat_data
    evaluated = {row["prompt"] for row in chat["prompts.jsonl"]
                 if heldout_split(row["prompt"], split.seed, split.heldout_fraction) == "heldout"}
    assert evaluated and not evaluated & {row["prompt"] for row in chat[BATCH]}


def test_risky_prompts_are_not_the_safety_pairs_prompts(chat):
    risky = {row["prompt"] for row in chat["prompts.jsonl"] if row["is_safety"]}
    assert risky and not risky & {row["prompt"] for row in chat["safety_pairs.jsonl"]}


def test_multiturn_dialogs_are_training_dialogs_of_two_to_four_exchanges(chat):
    for row in chat["faq_multiturn.jsonl"]:
        assert check_dialog(row["dialog"], "assistant") == row["dialog"], row["id"]
        assert 2 <= len(row["dialog"]) // 2 <= 4


def test_no_faq_entry_serves_two_multiturn_dialogs(chat):
    used = [i for row in chat["faq_multiturn.jsonl"] for i in row["faq_ids"]]
    assert len(used) == len(set(used))


@pytest.mark.parametrize("name", FILES)
def test_most_rows_fit_the_demo_context(chat, name):
    lengths = [dialog_chars(row) for row in chat[name]]
    assert sum(n <= DIALOG_CHARS for n in lengths) >= 0.8 * len(lengths)


def test_safety_answers_are_short(chat):
    assert max(len(row["chosen"]) for row in chat["safety_pairs.jsonl"]) <= 600


def test_the_chat_demo_stays_small(demo_data):
    assert sum(p.stat().st_size for p in (demo_data / "chat").rglob("*") if p.is_file()) < 1.5e6
