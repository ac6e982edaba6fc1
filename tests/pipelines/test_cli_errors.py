"""A user's mistake is one line and exit code 2, before any work starts where it can be known then.

"Before any work" is checked the strict way: no stage output directory and no MLflow store exist
afterwards, so nothing was run and no run was left RUNNING.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main


@pytest.fixture
def empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def llama2(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["--quiet", *args])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The one error line (libraries may log around it, but no traceback and no second error)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def nothing_was_started(workdir: Path) -> bool:
    return not (workdir / "artifacts").exists() and not (workdir / "mlflow.db").exists()


def source_config(workdir: Path, path: str, fmt: str = "jsonl") -> Path:
    config = workdir / "mine.yaml"
    config.write_text(f"ingest:\n  sources:\n    - {{name: mine, paths: [{path}], format: {fmt}}}\n")
    return config


@pytest.mark.parametrize("override, expected", [
    ("pretrain.model_size=huge", "pretrain.model_size: Input should be '7B', '13B', '34B', '70B', '1.1B', 'demo' or 'tiny'"),
    ("pretrain.global_batch_tokens=1000", "global_batch_tokens=1000 is not a multiple of seq_len x micro_batch_size"),
    ("pretrain.model_overrides={dimm: 3}", "model_overrides has unknown fields ['dimm']"),
    ("evaluate.benchmarks=[arc_easy, mmlu_pro]", "unknown benchmarks ['mmlu_pro']"),
    ("filter.toxicity.scorer=nonsense", "must be 'lexicon' or 'package.module:factory'"),
])
def test_a_bad_config_value_is_one_line_naming_the_field_before_anything_runs(empty_dir, capsys, override, expected):
    code, err = llama2(capsys, "run", "pretrain", "--set", override)
    assert code == 2
    assert expected in one_line(err) and f"--set {override}" in err
    assert nothing_was_started(empty_dir)


@pytest.mark.parametrize("override, expected", [
    ("sft.lora.rank=0", "sft.lora.rank: Input should be greater than or equal to 1"),
    ("reward_safety.lora.target_modules=[wq, q_proj]", "reward_safety.lora.target_modules.1: Input should be 'wq'"),
    ("rlhf.ppo.lora.dropout=0.1", "rlhf.ppo: lora.dropout=0.1: PPO needs 0"),
    ("gatt.finetune.freeze_layers=-1", "gatt.finetune.freeze_layers: Input should be greater than or equal to 0"),
])
def test_a_bad_freezing_or_lora_setting_is_one_line_naming_the_field_before_anything_runs(empty_dir, capsys, override,
                                                                                         expected):
    code, err = llama2(capsys, "run", "chat", "--set", override)
    assert code == 2
    assert expected in one_line(err) and f"--set {override}" in err
    assert nothing_was_started(empty_dir)


def test_more_workers_than_the_machine_has_cpus_is_refused_before_anything_runs(empty_dir, capsys):
    code, err = llama2(capsys, "run", "pretrain", "--set", "pretrain.num_workers=512",
                       "--set", "pretrain.global_batch_tokens=524288")
    assert code == 2
    assert "pretrain: needs 512 CPU" in one_line(err) and "num_workers" in err
    assert nothing_was_started(empty_dir)


def test_a_source_path_that_matches_nothing_is_named_before_anything_runs(empty_dir, capsys):
    code, err = llama2(capsys, "run", "pretrain", "--config", str(source_config(empty_dir, "nothing/*.jsonl")))
    assert code == 2
    assert "ingest source 'mine'" in one_line(err) and "nothing/*.jsonl" in err
    assert nothing_was_started(empty_dir)


def test_a_parquet_source_without_the_text_column_is_named_before_anything_runs(empty_dir, capsys):
    pq.write_table(pa.table({"id": ["a"], "body": ["some text"]}), empty_dir / "docs.parquet")
    code, err = llama2(capsys, "run", "pretrain", "--config", str(source_config(empty_dir, "docs.parquet", "parquet")))
    assert code == 2
    assert "has no column 'text'" in one_line(err) and "docs.parquet" in err
    assert nothing_was_started(empty_dir)


def test_an_empty_input_file_is_named_before_anything_runs(empty_dir, capsys):
    (empty_dir / "empty.jsonl").write_text("")
    code, err = llama2(capsys, "run", "pretrain", "--config", str(source_config(empty_dir, "empty.jsonl")))
    assert code == 2
    assert "every input file is empty" in one_line(err) and "empty.jsonl" in err
    assert nothing_was_started(empty_dir)


def test_a_corrupt_gzip_file_is_named_in_one_line(empty_dir, capsys, ray_local):
    good = gzip.compress(b"".join(json.dumps({"text": f"document {i} " * 20}).encode() + b"\n" for i in range(200)))
    (empty_dir / "broken.jsonl.gz").write_bytes(good[: len(good) // 2] + b"\x00" * 64 + good[-8:])
    code, err = llama2(capsys, "run", "pretrain", "--until", "ingest",
                       "--config", str(source_config(empty_dir, "broken.jsonl.gz")))
    assert code == 2
    assert "cannot read" in one_line(err) and "broken.jsonl.gz" in err
    assert not list((empty_dir / "artifacts" / "pretrain" / "ingest").glob("*/manifest.json"))


def test_a_source_that_yields_no_documents_is_named(empty_dir, capsys, ray_local):
    (empty_dir / "junk.jsonl").write_text("not json\n{\"body\": \"no text field\"}\n")
    code, err = llama2(capsys, "run", "pretrain", "--until", "ingest", "--config", str(source_config(empty_dir, "junk.jsonl")))
    assert code == 2
    assert "ingest source 'mine' yielded no documents" in one_line(err) and "allow_empty_sources" in err


def test_lineage_in_a_directory_without_runs_is_one_line_and_creates_no_store(empty_dir, capsys):
    code, err = llama2(capsys, "lineage", "0123456789abcdef0123456789abcdef")
    assert code == 2
    assert "no MLflow store" in one_line(err)
    assert not (empty_dir / "mlflow.db").exists()


def test_an_unknown_pipeline_or_stage_is_one_line(empty_dir, capsys):
    code, err = llama2(capsys, "run", "pretrian")
    assert code == 2 and "unknown pipeline 'pretrian'" in one_line(err)
    code, err = llama2(capsys, "run", "pretrain", "--only", "tokenise")
    assert code == 2 and "has no stage 'tokenise'" in one_line(err)
    assert nothing_was_started(empty_dir)


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_publishes_nothing(tmp_path: Path):
    """A real SIGINT to a real `llama2 run`, while its first stage runs."""
    rows = "".join(json.dumps({"text": f"row {i} " + "word " * 200}) + "\n" for i in range(200_000))
    (tmp_path / "big.jsonl").write_text(rows)
    source_config(tmp_path, "big.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "pretrain", "--until", "dedup",
                             "--config", "mine.yaml"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "starting a local Ray instance" in line:
            break
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(lines) + rest
    assert "Traceback" not in rest
    assert "interrupted: nothing unfinished was published" in rest
    assert not list((tmp_path / "artifacts" / "pretrain").glob("*/*/manifest.json"))


def test_an_empty_base_model_folder_is_one_line_before_anything_runs(empty_dir, capsys):
    (empty_dir / "empty-model").mkdir()
    code, err = llama2(capsys, "run", "chat", "--set", "base_model.source=hf",
                       "--set", f"base_model.path={empty_dir / 'empty-model'}")
    assert code == 2
    assert "base_model.path" in one_line(err) and "empty-model has no config.json" in err
    assert nothing_was_started(empty_dir) and not (empty_dir / "artifacts").exists()


def test_a_non_llama_base_model_is_refused_naming_the_users_folder(empty_dir, capsys):
    folder = empty_dir / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "n_layer": 12}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.model").write_bytes(b"")
    code, err = llama2(capsys, "run", "chat", "--set", "base_model.source=hf", "--set", f"base_model.path={folder}")
    assert code == 2
    line = one_line(err)
    assert "model_type='gpt2'" in line and str(folder / "config.json") in line and ".work-" not in line
    assert nothing_was_started(empty_dir)


def test_a_chat_source_path_that_matches_nothing_is_called_a_chat_data_source(empty_dir, capsys):
    (empty_dir / "chat.yaml").write_text(
        "chat_data:\n  sources:\n    - {name: dialogs, kind: dialog, paths: [missing/*.jsonl]}\n")
    code, err = llama2(capsys, "run", "chat", "--config", "chat.yaml")
    assert code == 2
    assert "chat_data source 'dialogs'" in one_line(err) and "missing/*.jsonl" in err
    assert nothing_was_started(empty_dir)
