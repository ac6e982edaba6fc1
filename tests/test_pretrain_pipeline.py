"""The `llama2` command on the shipped demo's data stages: caching, selection, lineage.

(The training stages have their own tests; here the pipeline runs `--until tokenize`.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from pipelines.cli import main

STAGES = ["ingest", "dedup", "filter", "train_tokenizer", "tokenize"]


def llama2(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: str) -> dict[str, list[str]]:
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if row and row[0] in STAGES}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, ray_local) -> Path:
    """One full demo run in a fresh working directory, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["--quiet", "run", "pretrain", "--until", "tokenize"]) == 0
    mlflow.set_tracking_uri(None)
    return workdir


@pytest.fixture
def in_demo(demo_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(demo_run)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield demo_run
    mlflow.set_tracking_uri(None)


def manifest(workdir: Path, stage: str) -> dict:
    [path] = (workdir / "artifacts" / stage).glob("*/manifest.json")
    return json.loads(path.read_text())


def test_demo_run_publishes_every_stage_with_counts_that_add_up(in_demo: Path) -> None:
    for stage in STAGES:
        counts = manifest(in_demo, stage)["counts"]
        assert counts["in"] == counts["out"] + counts["rejected"], stage
    assert manifest(in_demo, "ingest")["counts"]["out"] == manifest(in_demo, "dedup")["counts"]["in"]


def test_demo_dedup_visibly_removes_duplicates(in_demo: Path) -> None:
    assert manifest(in_demo, "dedup")["counts"]["rejected"] > 100


def test_unchanged_rerun_is_all_cache_hits_each_well_under_a_second(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "run", "pretrain", "--until", "tokenize")
    assert code == 0
    rows = table(out)
    assert list(rows) == STAGES
    assert all(row[1] == "cached" and float(row[2]) < 1.0 for row in rows.values()), out


def test_changing_one_stage_reruns_it_and_its_descendants_only(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "run", "pretrain", "--until", "tokenize",
                           "--set", "tokenize.max_tokens_per_shard=200000")
    assert code == 0
    assert [name for name, row in table(out).items() if row[1] == "ran"] == ["tokenize"]


def test_stages_reports_done_and_stale(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "stages", "pretrain", "--set", "filter.quality.min_words=10")
    assert code == 0
    status = {name: row[1] for name, row in table(out).items()}
    assert status == {"ingest": "done", "dedup": "done", "filter": "stale",
                      "train_tokenizer": "stale", "tokenize": "stale"}
    assert "pretrain" in out and "evaluate" in out


def test_only_with_missing_upstream_names_it(in_demo: Path, capsys) -> None:
    code, _, err = llama2(capsys, "run", "pretrain", "--only", "tokenize", "--set", "filter.quality.min_words=11")
    assert code == 2
    assert "upstream stage 'filter'" in err


def test_lineage_prints_the_upstream_chain_with_configs_and_run_ids(in_demo: Path, capsys) -> None:
    code, out, _ = llama2(capsys, "lineage", "tokenize")
    assert code == 0
    stages = re.findall(r"^(\w+)  fingerprint=", out, flags=re.MULTILINE)
    assert stages[-1] == "tokenize" and set(stages) == set(STAGES)
    assert stages.index("ingest") < stages.index("dedup") < stages.index("filter")
    assert re.search(r"^  threshold = ", out, flags=re.MULTILINE)
    assert len(set(re.findall(r"run=([0-9a-f]{32})", out))) == len(STAGES)
