"""A round's preference batch (`preferences_v{k}`): pairs linked to the round's candidates, refused with a
reason when they are not, and a batch that does not rate every candidate yet stops the run in one
line, after the stages before it are published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ConfigDict

from infra.settings import RuntimeSettings, resolve_runtime
from operators.annotate.store import Rating, RatingsFile
from operators.chat.chat_sources import chat_files
from operators.chat.preference_batch import IncompleteBatchError, PreferenceBatchConfig, run_preference_batch
from operators.chat.preference_candidates import candidate_id
from operators.formats.chat import CANDIDATES_SCHEMA
from operators.formats.documents import write_table
from operators.stage_io import StageIO, StageStats
from pipelines.cli import user_error
from pipelines.dag import Pipeline
from pipelines.runner import run_pipeline, stage_statuses
from pipelines.stage import Stage
from tests.chat.conftest import write_jsonl

PROMPTS = ["what is the river", "why is the fox quick", "where does the dog sleep"]


def candidate_row(prompt_id: str, prompt: str) -> dict:
    row = {"candidate_id": candidate_id(2, prompt_id), "prompt_id": prompt_id, "round": 2,
           "dialog": json.dumps([{"role": "user", "content": prompt}]), "is_safety": False, "category": None}
    for side, (policy, temperature) in {"a": ("rs_finetune_v1", 1.0), "b": ("sft", 0.7)}.items():
        row |= {f"answer_{side}": f"answer {side}", f"tokens_{side}": [5, 6, 2], f"ended_{side}": True,
                f"policy_{side}": policy, f"checkpoint_{side}": f"{policy}-fp", f"temperature_{side}": temperature,
                f"seed_{side}": 21}
    return row


def write_candidates(output: Path) -> Path:
    rows = [candidate_row(f"p{i}", prompt) for i, prompt in enumerate(PROMPTS)]
    write_table(pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), output / "candidates" / "part-00000.parquet")
    return output


def rating(i: int, **changes) -> dict:
    return {"candidate_id": candidate_id(2, f"p{i}"), "prompt": PROMPTS[i], "chosen": "the river is data",
            "rejected": "a lazy fox", "rating": "better", "kind": "helpfulness"} | changes


def batch(paths: list[Path], **source) -> PreferenceBatchConfig:
    return PreferenceBatchConfig(round=2, context_tokens=128, sources=[
        {"name": "ratings_v2", "paths": [str(p) for p in paths], **source}])


def run_batch(tmp_path: Path, base_output: Path, config: PreferenceBatchConfig) -> tuple[StageStats, dict]:
    out = tmp_path / "preferences_v2"
    out.mkdir()
    inputs = {"model": base_output, "candidates": write_candidates(tmp_path / "candidates")}
    stats = run_preference_batch(config, StageIO(out, inputs, stage="preferences_v2",
                                                 producers={"candidates": "preference_candidates_v2"}))
    return stats, {name: pq.read_table(out / name).to_pylist() for name in ("preferences", "rejects")}


def test_an_incomplete_batch_stops_with_how_many_candidates_are_rated_and_how_to_rate_the_rest(
        ray_local, tmp_path, base_output):
    ratings = write_jsonl(tmp_path / "ratings.jsonl", [rating(0), rating(2, rating="nonsense")])
    with pytest.raises(IncompleteBatchError) as stop:
        run_batch(tmp_path, base_output, batch([ratings]))
    message = str(stop.value)
    assert "\n" not in message
    assert message.startswith(f"preferences_v2: 1 of 3 candidates rated in {ratings}; 1 rows refused (invalid_rating 1)")
    assert f"rate the other 2 (the candidates input (stage preference_candidates_v2): {tmp_path / 'candidates'}" in message
    assert f"into {ratings}, a line per pair with candidate_id, prompt, chosen, rejected, rating, kind" in message
    assert "on the annotation page (`llama2 annotate --round 2` with this run's --config" in message


def test_a_ratings_file_not_written_yet_is_a_batch_with_nothing_rated(ray_local, tmp_path, base_output):
    config = batch([tmp_path / "not-yet.jsonl"])
    assert chat_files(config) == []  # checked before anything runs: no error, no file
    with pytest.raises(IncompleteBatchError, match="0 of 3 candidates rated"):
        run_batch(tmp_path, base_output, config)


def test_a_complete_batch_links_every_pair_to_its_candidate_and_what_wrote_its_answers(
        ray_local, tmp_path, base_output):
    ratings = write_jsonl(tmp_path / "ratings.jsonl", [rating(i) for i in range(3)] + [rating(1, rejected="a dog")])
    stats, tables = run_batch(tmp_path, base_output, batch([ratings]))
    assert sorted(r["candidate_id"] for r in tables["preferences"]) == ["v2/p0", "v2/p1", "v2/p1", "v2/p2"]
    policies = json.loads(tables["preferences"][0]["candidate_policies"])
    assert [(p["answer"], p["policy"], p["checkpoint"], p["temperature"], p["seed"]) for p in policies] == [
        ("a", "rs_finetune_v1", "rs_finetune_v1-fp", 1.0, 21), ("b", "sft", "sft-fp", 0.7, 21)]
    assert stats.metrics["batch/candidates"] == 3 and stats.metrics["batch/linked_pairs"] == 4
    assert stats.summary["candidates_from"] == "preference_candidates_v2"


def test_the_file_the_annotation_page_writes_is_the_batch_as_it_is(ray_local, tmp_path, base_output):
    ratings = tmp_path / "ratings_v2.jsonl"
    store = RatingsFile(ratings)
    judged = [("ana", "helpfulness", None), ("ben", "safety", "both_safe"), ("ana", "safety", "chosen_safe_other_not")]
    for i, (annotator, task, label) in enumerate(judged):
        store.save(Rating(candidate_id(2, f"p{i}"), annotator, "b", "slightly_better", task, label),
                   candidate_row(f"p{i}", PROMPTS[i]))
    stats, tables = run_batch(tmp_path, base_output, batch([ratings]))
    assert tables["rejects"] == [] and stats.metrics["batch/linked_pairs"] == 3
    assert sorted((r["candidate_id"], r["label"], r["rating"], r["chosen"], r["rejected"]) for r in tables["preferences"]) == [
        (f"v2/p{i}", task, "slightly_better", "answer b", "answer a") for i, (_, task, _) in enumerate(judged)]


def test_a_pair_that_names_no_candidate_or_not_its_prompt_is_refused_with_the_reason(ray_local, tmp_path, base_output):
    rows = [rating(i) for i in range(3)]
    rows += [rating(0, candidate_id=None, id="no-link", rejected="x"), rating(0, candidate_id="v1/p0", id="elsewhere"),
             rating(0, prompt="another question", id="other-prompt")]
    stats, tables = run_batch(tmp_path, base_output, batch([write_jsonl(tmp_path / "ratings.jsonl", rows)]))
    assert {r["id"]: r["reason"] for r in tables["rejects"]} == {
        "no-link": "no_candidate", "elsewhere": "unknown_candidate", "other-prompt": "candidate_prompt_mismatch"}
    assert stats.count_in == 6 == stats.count_out + stats.count_rejected


def test_a_file_of_pairs_on_prompts_of_its_own_is_taken_without_candidates(ray_local, tmp_path, base_output):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"question {i}", "chosen": "yes", "rejected": "no", "rating": "better", "kind": "safety"}
        for i in range(4)])
    out = tmp_path / "preferences_v2"
    out.mkdir()
    stats = run_preference_batch(batch([pairs], rates_candidates=False), StageIO(out, {"model": base_output}))
    rows = pq.read_table(out / "preferences").to_pylist()
    assert len(rows) == 4 and {r["candidate_id"] for r in rows} == {None}
    assert stats.inputs_read == ()


class Nothing(BaseModel):
    model_config = ConfigDict(extra="forbid")


def test_the_run_stops_before_an_incomplete_batch_with_the_stages_before_it_published(ray_local, tmp_path,
                                                                                     base_output, monkeypatch):
    """What `llama2 run` does: the candidates are published to be rated, the batch stops the run in one line."""
    monkeypatch.chdir(tmp_path)

    def model(config: Nothing, io: StageIO) -> StageStats:
        shutil.copytree(base_output / "model", io.output_dir / "model")
        return StageStats(unit="models", count_in=1, count_out=1)

    def candidates(config: Nothing, io: StageIO) -> StageStats:
        write_candidates(io.output_dir)
        return StageStats(unit="prompts", count_in=3, count_out=3, output_rows={"candidates/": 3})

    ratings = write_jsonl(tmp_path / "ratings.jsonl", [rating(1)])
    pipeline = Pipeline("chat", (
        Stage("base_model", model, Nothing()),
        Stage("preference_candidates_v2", candidates, Nothing()),
        Stage("preferences_v2", run_preference_batch, batch([ratings]), outside_inputs=chat_files,
              inputs={"model": "base_model", "candidates": "preference_candidates_v2"}),
    ), Nothing())
    context = resolve_runtime(RuntimeSettings(), cwd=tmp_path)
    with pytest.raises(IncompleteBatchError) as stop:
        run_pipeline(pipeline, context)
    assert user_error(stop.value) is stop.value  # the CLI prints it as one line, exit code 2
    assert "1 of 3 candidates rated" in str(stop.value)
    assert [s.status for s in stage_statuses(pipeline, context)] == ["done", "done", "missing"]
