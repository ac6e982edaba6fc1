"""Chat sources in the formats people already have (HH-RLHF, UltraFeedback, TRL, OpenAI messages; JSONL,
Parquet, Hugging Face save_to_disk folders) land as the rows the project's own format gives; a record that
fits no format is a reject with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from operators.chat.chat_data import ChatDataConfig, ChatDataError, run_chat_data
from operators.chat.chat_sources import ChatSourceConfig
from operators.chat.dialogs import DialogRejected, check_dialog
from operators.chat.source_formats import dialog_of, format_of, pair_of, rating_of
from operators.data.readers import plan_units, read_unit
from operators.stage_io import StageIO

FIXTURES = Path(__file__).parent / "data" / "formats"
LEVELS = {"significantly_better": 4, "better": 2, "slightly_better": 0.5}  # thresholds on the score difference
PREFERENCE_FORMATS = ["project_preferences", "hh_rlhf", "ultrafeedback", "trl_standard", "trl_conversational"]


def records(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def source(kind: str = "preference", **settings) -> ChatSourceConfig:
    return ChatSourceConfig(**{"name": "s", "kind": kind, "paths": ["unused"], **settings})


PAIRS = source(default_label="helpfulness", default_rating="negligibly_better", score_levels=LEVELS)


def pair_row(record: dict[str, Any], settings: ChatSourceConfig = PAIRS) -> tuple:
    """(context, chosen, rejected, rating) as the chat data stage checks them."""
    pair = pair_of(record, settings)
    return (check_dialog(pair.context, "user"), pair.chosen.strip(), pair.rejected.strip(), rating_of(record, settings))


def refusal(read, record: dict[str, Any], settings: ChatSourceConfig) -> str:
    with pytest.raises(DialogRejected) as refused:
        read(record, settings)
    return refused.value.reason


def project_pairs(single_turn_only: bool = False) -> list[tuple]:
    rows = [pair_row(r) for r in records("project_preferences")]
    return [r for r in rows if len(r[0]) == 1] if single_turn_only else rows


@pytest.mark.parametrize("name, expected", [
    ("project_preferences", "project"), ("hh_rlhf", "hh_rlhf"), ("ultrafeedback", "ultrafeedback"),
    ("trl_standard", "project"), ("trl_conversational", "trl_conversational"),
])
def test_a_records_format_is_detected_from_its_keys_and_value_types(name, expected):
    assert {format_of(r, PAIRS) for r in records(name)} == {expected}


def test_messages_are_detected_for_dialogs_and_prompts():
    assert format_of(records("messages")[0], source("dialog")) == "messages"
    assert format_of({"messages": [{"role": "user", "content": "hi"}]}, source("prompt")) == "messages"


def test_an_hh_rlhf_transcript_pair_is_its_shared_turns_and_its_two_last_answers():
    assert [row[:3] for row in map(pair_row, records("hh_rlhf"))] == [row[:3] for row in project_pairs()]


def test_ultrafeedback_pairs_are_the_projects_pairs_rated_by_their_score_difference():
    assert [pair_row(r) for r in records("ultrafeedback")] == project_pairs()


@pytest.mark.parametrize("name", ["hh_rlhf", "trl_standard", "trl_conversational"])
def test_unrated_formats_give_the_projects_pairs_at_the_default_rating(name):
    expected = project_pairs(single_turn_only=name == "trl_standard")
    assert [pair_row(r) for r in records(name)] == [(*row[:3], "negligibly_better") for row in expected]


@pytest.mark.parametrize("name", PREFERENCE_FORMATS)
def test_each_format_read_as_its_own_record_format_gives_what_detection_gives(name):
    explicit = {"project_preferences": "project"}.get(name, name)
    settings = PAIRS.model_copy(update={"record_format": explicit})
    assert [pair_row(r, settings) for r in records(name)] == [pair_row(r) for r in records(name)]


def test_trl_conversational_without_a_prompt_takes_the_shared_turns_as_it():
    record = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
              "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    assert pair_row(record)[:3] == ([{"role": "user", "content": "hi"}], "hello", "go away")


def test_messages_dialogs_are_the_projects_dialogs():
    dialogs = source("dialog")
    expected = [dialog_of(r, dialogs) for r in records("project_dialogs")]
    assert [dialog_of(r, dialogs) for r in records("messages")] == expected


def test_openai_text_parts_are_joined_and_other_message_keys_left_out():
    parts = [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]
    record = {"messages": [{"role": "user", "content": parts},
                           {"role": "assistant", "content": "three", "weight": 1, "name": "bot"}]}
    assert dialog_of(record, source("dialog")) == [{"role": "user", "content": "one two"},
                                                   {"role": "assistant", "content": "three"}]


@pytest.mark.parametrize("difference, level", [
    (6, "significantly_better"), (4, "significantly_better"), (3.9, "better"), (2, "better"), (1, "slightly_better"),
    (0.4, "negligibly_better"), (0, "negligibly_better"),
])
def test_a_score_difference_maps_onto_the_four_levels_by_the_thresholds(difference, level):
    assert rating_of({"score_chosen": 5 + difference, "score_rejected": 5}, PAIRS) == level


def test_a_rating_field_wins_over_scores_and_scores_over_the_default_rating():
    assert rating_of({"rating": "better", "score_chosen": 9, "score_rejected": 1}, PAIRS) == "better"
    assert rating_of({"score_chosen": 9, "score_rejected": 1}, PAIRS) == "significantly_better"
    assert rating_of({}, PAIRS) == "negligibly_better"


@pytest.mark.parametrize("record, reason", [
    ({"score_chosen": 3, "score_rejected": 7}, "chosen_scored_lower"),
    ({"score_chosen": "high", "score_rejected": 7}, "invalid_rating"),
    ({"score_chosen": 3}, "invalid_rating"),
])
def test_scores_that_cannot_rate_a_pair_are_refused_with_their_reason(record, reason):
    assert refusal(rating_of, record, PAIRS) == reason


def test_an_unrated_pair_without_a_default_rating_is_refused_as_invalid_rating():
    assert refusal(rating_of, records("trl_standard")[0], source()) == "invalid_rating"


@pytest.mark.parametrize("kind, record", [
    ("preference", {"text": "a document, not a pair"}),
    ("preference", {"prompt": "q", "answer": "a"}),
    ("dialog", {"conversations": [{"from": "human", "value": "hi"}]}),
    ("prompt", {"question": "why"}),
])
def test_a_record_that_fits_no_format_is_refused_as_unknown_format(kind, record):
    read = pair_of if kind == "preference" else dialog_of
    assert refusal(read, record, source(kind)) == "unknown_format"


@pytest.mark.parametrize("name, record_format", [("ultrafeedback", "hh_rlhf"), ("hh_rlhf", "trl_conversational"),
                                                 ("trl_conversational", "trl_standard")])
def test_a_record_of_another_format_than_the_sources_is_refused(name, record_format):
    settings = PAIRS.model_copy(update={"record_format": record_format})
    assert refusal(pair_of, records(name)[0], settings) == "malformed_dialog"


def test_transcripts_that_differ_before_their_last_answers_are_refused():
    record = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hey\n\nAssistant: hello there"}
    assert refusal(pair_of, record, PAIRS) == "pair_context_differs"


@pytest.mark.parametrize("chosen", ["Preamble.\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: hi"])
def test_a_transcript_not_made_of_turns_ending_with_an_answer_is_refused(chosen):
    record = {"chosen": chosen, "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    assert refusal(pair_of, record, source(record_format="hh_rlhf")) == "malformed_dialog"


def test_a_record_format_of_another_kind_is_an_error_naming_the_allowed_ones():
    with pytest.raises(ValidationError, match="record_format 'hh_rlhf' is not a dialog format; a dialog source "
                                              "takes auto, project, messages"):
        source("dialog", record_format="hh_rlhf")


def test_default_rating_must_be_one_of_the_four_levels():
    with pytest.raises(ValidationError, match=r"default_rating\n.*'significantly_better', 'better', "
                                              "'slightly_better' or 'negligibly_better'"):
        source(default_rating="good")


@pytest.mark.parametrize("levels, message", [
    ({"better": 2, "slightly_better": 1, "great": 3}, r"unknown level\(s\) \['great'\]; the levels with a threshold "
                                                      "are significantly_better, better, slightly_better"),
    ({"significantly_better": 1, "better": 2, "slightly_better": 0.5}, "score_levels must decrease"),
    ({"significantly_better": 3, "better": 2, "slightly_better": 0}, "slightly_better\n.*greater than 0"),
])
def test_score_levels_name_the_levels_and_decrease(levels, message):
    with pytest.raises(ValidationError, match=message):
        source(score_levels=levels)


def test_ultrafeedback_needs_score_levels_or_a_default_rating():
    with pytest.raises(ValidationError, match="record_format 'ultrafeedback' rates pairs by their scores: set "
                                              "score_levels"):
        source(record_format="ultrafeedback")


# Files: Parquet, and the folders Hugging Face `datasets` writes with save_to_disk.

def table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows of different keys as one table, as `datasets` stores them: every key a column, null where unset."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def save_to_disk(rows: list[dict[str, Any]], folder: Path, shards: int = 2) -> Path:
    """A folder laid out as `Dataset.save_to_disk` writes it: Arrow IPC *stream* shards named
    data-NNNNN-of-NNNNN.arrow, with dataset_info.json and state.json beside them."""
    folder.mkdir(parents=True)
    data = table(rows)
    features = {name: {"_type": "Value"} for name in data.column_names}  # enough for a reader that ignores it
    data = data.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    step = -(-len(rows) // shards)
    for i, name in enumerate(names):
        with pa.ipc.new_stream(folder / name, data.schema) as writer:
            writer.write_table(data.slice(i * step, step))
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}, indent=2))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                   "_fingerprint": "0", "_format_type": None, "_split": "train"}))
    return folder


def stored(name: str, storage: str, root: Path, extra: list[dict[str, Any]] = ()) -> Path:
    """Fixture `name` (and `extra` rows) as JSONL, Parquet or a save_to_disk folder under `root`."""
    rows = records(name) + list(extra)
    if storage == "jsonl":
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    if storage == "parquet":
        path = root / f"{name}.parquet"
        pq.write_table(table(rows), path, row_group_size=2)
        return path
    return save_to_disk(rows, root / name)


def test_a_saved_dataset_folder_reads_every_shard_in_order_with_its_row_locations(tmp_path):
    folder = save_to_disk(records("ultrafeedback"), tmp_path / "uf")
    files = source(paths=[str(folder)], format="arrow").files()
    assert [f.relpath for f in files] == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    read = [raw for unit in plan_units("s", "arrow", files, 1 << 62, 0, "chat_data source") for raw in read_unit(unit)]
    assert [r.value for r in read] == records("ultrafeedback")
    assert [(r.relpath, r.location) for r in read] == [("data-00000-of-00002.arrow", "#0"),
                                                       ("data-00000-of-00002.arrow", "#1"),
                                                       ("data-00001-of-00002.arrow", "#0")]


def test_an_arrow_ipc_file_reads_as_a_stream_does(tmp_path):
    path = tmp_path / "pairs.arrow"
    pairs = table(records("hh_rlhf"))
    with pa.ipc.new_file(path, pairs.schema) as writer:
        writer.write_table(pairs)
    files = source(paths=[str(path)], format="arrow").files()
    read = [raw.value for unit in plan_units("s", "arrow", files, 1 << 62, 0) for raw in read_unit(unit)]
    assert read == records("hh_rlhf")


def test_a_saved_dataset_folder_read_as_jsonl_is_an_error_that_says_format_arrow(tmp_path):
    folder = save_to_disk(records("hh_rlhf"), tmp_path / "hh")
    with pytest.raises(ChatDataError, match=f"chat source 's': {folder} is a Hugging Face datasets folder "
                                            r"\(save_to_disk\); set format: arrow"):
        source(paths=[str(folder)]).files()


# Through the chat data stage.

FILE_FORMAT = {"jsonl": "jsonl", "parquet": "parquet", "folder": "arrow"}
COMPARED = ("context", "chosen", "rejected", "rating", "label", "category", "split")


def run_stage(root: Path, base_output: Path, sources: list[dict[str, Any]]):
    out = root / f"out{len(list(root.glob('out*')))}"
    out.mkdir()
    stats = run_chat_data(ChatDataConfig(context_tokens=128, heldout_fraction=0.5, sources=sources),
                          StageIO(out, {"model": base_output}, stage="chat_data"))
    return stats, {name: pq.read_table(out / name).to_pylist() for name in ("dialogs", "preferences", "rejects")}


def fields(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[tuple]:
    return [tuple(r[n] for n in names) for r in rows]


@pytest.fixture(scope="module")
def project_rows(ray_local, tmp_path_factory, base_output) -> dict[str, list[dict[str, Any]]]:
    """What the project's own format gives: the rows every other format must land as."""
    _, tables = run_stage(tmp_path_factory.mktemp("project"), base_output, [
        {"name": "pairs", "kind": "preference", "paths": [str(FIXTURES / "project_preferences.jsonl")]},
        {"name": "dialogs", "kind": "dialog", "paths": [str(FIXTURES / "project_dialogs.jsonl")]}])
    assert (len(tables["preferences"]), len(tables["dialogs"]), len(tables["rejects"])) == (3, 2, 0)
    return tables


@pytest.mark.parametrize("name, storage", [("hh_rlhf", "folder"), ("ultrafeedback", "parquet"),
                                           ("trl_standard", "jsonl"), ("trl_conversational", "folder")])
def test_each_preference_format_lands_as_the_projects_rows(project_rows, tmp_path, base_output, name, storage):
    path = stored(name, storage, tmp_path)
    stats, tables = run_stage(tmp_path, base_output, [
        {"name": name, "kind": "preference", "paths": [str(path)], "format": FILE_FORMAT[storage],
         "default_label": "helpfulness", "default_rating": "better", "score_levels": LEVELS}])
    expected = [r for r in project_rows["preferences"] if name != "trl_standard" or len(json.loads(r["context"])) == 1]
    if name != "ultrafeedback":  # unrated: the default rating
        expected = [r | {"rating": "better"} for r in expected]
    assert fields(tables["preferences"], COMPARED) == fields(expected, COMPARED)
    assert stats.count_in == len(expected) and stats.count_rejected == 0


def test_messages_dialogs_land_as_the_projects_rows(project_rows, tmp_path, base_output):
    path = stored("messages", "parquet", tmp_path)
    _, tables = run_stage(tmp_path, base_output, [{"name": "m", "kind": "dialog", "paths": [str(path)],
                                                   "format": "parquet"}])
    names = ("dialog", "tokens", "split")
    assert fields(tables["dialogs"], names) == fields(project_rows["dialogs"], names)


def test_records_that_fit_no_format_are_rejects_with_their_reason_and_the_counts_add_up(ray_local, tmp_path,
                                                                                         base_output):
    inverted = {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
                "score_chosen": 1.0, "score_rejected": 7.0, "kind": "helpfulness"}  # the others' kind: null
    folder = stored("ultrafeedback", "folder", tmp_path, extra=[{"text": "a document, not a pair"}, inverted])
    stats, tables = run_stage(tmp_path, base_output, [
        {"name": "uf", "kind": "preference", "paths": [str(folder)], "format": "arrow", "default_label": "safety",
         "score_levels": LEVELS}])
    assert [r["reason"] for r in tables["rejects"]] == ["unknown_format", "chosen_scored_lower"]
    assert json.loads(tables["rejects"][0]["record"])["text"] == "a document, not a pair"
    assert stats.count_in == 5 == stats.count_out + stats.count_rejected
    assert stats.rejected == {"unknown_format": 1, "chosen_scored_lower": 1}
    assert [r["label"] for r in tables["preferences"]] == ["safety"] * 3  # a null label is the default_label
