"""Configs by name: `--config NAME` and `--base-config NAME` read pipelines/configs/NAME.yaml when NAME is not a
file of its own (a pipeline's shipped configs start with its name); paths keep working; an unknown name is one
line naming the shipped ones; `llama2 submit` passes a shipped name on as it is."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from infra import job_submission as jobs
from pipelines.chat import CHAT
from pipelines.cli import _parser, main
from pipelines.cli.submit import _run_args
from pipelines.config_loader import CONFIG_DIR, ConfigError, find_config, load_config


def llama2(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_shipped_config_is_found_by_its_name() -> None:
    assert find_config("chat_demo", "chat") == CONFIG_DIR / "chat_demo.yaml"


def test_a_shipped_name_may_be_the_base_config() -> None:
    config = load_config(CHAT.config_model, "chat", None, base="chat_demo")
    assert config == load_config(CHAT.config_model, "chat", None, default_file=CHAT.default_config)


def test_a_path_to_a_config_still_works(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("sft: {epochs: 1}\n")
    assert find_config(str(mine), "chat") == mine
    assert load_config(CHAT.config_model, "chat", str(mine), default_file=CHAT.default_config).sft.epochs == 1


def test_a_file_in_the_working_directory_wins_over_a_shipped_name(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("chat_demo").write_text("sft: {epochs: 1}\n")
    assert find_config("chat_demo", "chat") == Path("chat_demo")


def test_a_shipped_name_belongs_to_its_pipeline() -> None:
    with pytest.raises(ConfigError, match="not a file, nor a config shipped for chat"):
        find_config("pretrain_demo", "chat")


def test_an_unknown_name_is_one_line_naming_the_shipped_configs(capsys) -> None:
    code, _, err = llama2(capsys, "config", "pretrain", "--config", "pretrain_dmo")
    assert code == 2
    assert err.count("\n") == 1
    assert "unknown config 'pretrain_dmo'" in err and "(shipped: pretrain_demo)" in err


def test_a_missing_yaml_path_is_named_as_a_missing_file(capsys) -> None:
    code, _, err = llama2(capsys, "config", "chat", "--config", "nowhere/mine.yaml")
    assert code == 2
    assert "config file not found: nowhere/mine.yaml" in err


def test_submit_passes_a_shipped_name_as_it_is(tmp_path: Path) -> None:
    args = _parser().parse_args(["submit", "chat", "--config", "chat_demo", "--base-config", "chat_demo"])
    command = shlex.split(jobs.entrypoint("chat", _run_args(args, tmp_path)))
    assert command[-4:] == ["--base-config", "chat_demo", "--config", "chat_demo"]
