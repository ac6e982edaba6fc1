"""Config files layer over a base config, --set overrides them, and mistakes name the field and the layer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config_loader import ConfigError, load_config
from pipelines.config_schema import render_config
from pipelines.pretrain import PretrainConfig


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    paths: list[str] = Field(json_schema_extra={"config_path": True})
    format: Literal["jsonl", "parquet", "text"]


class Ingest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[Source] = Field(default_factory=list)
    max_doc_bytes: int = 1000


class Dedup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = 112
    lexicon: str | None = Field(None, json_schema_extra={"config_path": True})


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ingest: Ingest = Field(default_factory=Ingest)
    dedup: Dedup = Field(default_factory=Dedup)


def write(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load(config_file: Path | None = None, overrides=(), base: str | None = None, default: str | None = None):
    return load_config(Config, "toy", config_file, overrides, base=base, default_file=default)


def test_a_file_needs_only_the_keys_it_changes(tmp_path: Path) -> None:
    config = load(write(tmp_path, "dedup:\n  threshold: 0.7\n"))
    assert (config.dedup.threshold, config.dedup.num_perm, config.ingest.max_doc_bytes) == (0.7, 112, 1000)


def test_a_file_layers_over_the_base_config_not_the_bare_defaults(tmp_path: Path) -> None:
    base = write(tmp_path, "ingest:\n  max_doc_bytes: 5\ndedup:\n  num_perm: 64\n", "base.yaml")
    config = load(write(tmp_path, "dedup:\n  threshold: 0.7\n"), base=str(base))
    assert (config.dedup.threshold, config.dedup.num_perm, config.ingest.max_doc_bytes) == (0.7, 64, 5)


def test_the_shipped_demo_is_the_base_unless_the_paper_defaults_are_asked_for(tmp_path: Path) -> None:
    mine = write(tmp_path, "dedup:\n  threshold: 0.7\n")
    demo_based = load_config(PretrainConfig, "pretrain", mine, default_file="pretrain_demo.yaml")
    assert demo_based.dedup.threshold == 0.7
    assert demo_based.pretrain.model_size == "demo" and len(demo_based.ingest.sources) == 3
    paper_based = load_config(PretrainConfig, "pretrain", mine, base="paper", default_file="pretrain_demo.yaml")
    assert paper_based.pretrain.model_size == "7B" and paper_based.ingest.sources == []


def test_set_overrides_nested_values_with_yaml_typing(tmp_path: Path) -> None:
    config = load(write(tmp_path, "dedup:\n  threshold: 0.7\n"), ["dedup.threshold=0.9", "ingest.max_doc_bytes=5"])
    assert (config.dedup.threshold, config.ingest.max_doc_bytes) == (0.9, 5)


def test_a_misspelt_set_key_names_the_set_argument_and_suggests_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, "dedup:\n  threshold: 0.7\n"), ["dedup.thresold=0.7"])
    message = str(err.value)
    assert message.startswith("invalid config: --set dedup.thresold=0.7: dedup.thresold: unknown key")
    assert "did you mean 'threshold'?" in message and "`llama2 config toy`" in message
    assert "\n" not in message


def test_a_misspelt_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    mine = write(tmp_path, "dedup:\n  treshold: 0.7\n")
    with pytest.raises(ConfigError, match=rf"{mine}: dedup\.treshold: unknown key \(did you mean 'threshold'\?\)"):
        load(mine)


def test_bad_value_names_the_field_and_the_allowed_values(tmp_path: Path) -> None:
    text = "ingest:\n  sources:\n    - {name: a, paths: [x.jsonl], format: csv}\n"
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.format: Input should be 'jsonl', 'parquet' or 'text'"):
        load(write(tmp_path, text))


def test_out_of_range_override_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--set dedup\.threshold=3: dedup\.threshold: Input should be less than or equal to 1"):
        load(None, ["dedup.threshold=3"])


def test_malformed_override_is_explained() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(None, ["dedup.threshold"])


def test_relative_paths_resolve_against_the_file_that_names_them(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    base = write(tmp_path / "sub", "dedup:\n  lexicon: words.txt\n", "base.yaml")
    text = "ingest:\n  sources:\n    - {name: a, paths: [data/*.jsonl, /abs/b.jsonl], format: jsonl}\n"
    monkeypatch.chdir(tmp_path / "sub")
    config = load(write(tmp_path, text), base=str(base))
    assert config.ingest.sources[0].paths == [str(tmp_path.resolve() / "data/*.jsonl"), "/abs/b.jsonl"]
    assert config.dedup.lexicon == str((tmp_path / "sub" / "words.txt").resolve())


def test_set_paths_resolve_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(None, ["dedup.lexicon=lists/w.txt"]).dedup.lexicon == str(tmp_path.resolve() / "lists/w.txt")


def test_a_list_in_a_later_layer_replaces_the_whole_list(tmp_path: Path) -> None:
    base = write(tmp_path, "ingest:\n  sources:\n    - {name: a, paths: [/a], format: jsonl}\n"
                 "    - {name: b, paths: [/b], format: jsonl}\n", "base.yaml")
    config = load(write(tmp_path, "ingest:\n  sources:\n    - {name: c, paths: [/c], format: text}\n"), base=str(base))
    assert [s.name for s in config.ingest.sources] == ["c"]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "dedup: [\n")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid YAML") as err:
        load(bad)
    assert "\n" not in str(err.value)


def test_the_printed_schema_loads_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_config(PretrainConfig, "pretrain", None, default_file="pretrain_demo.yaml")
    text = render_config(config, "demo")
    assert "# shingle-set Jaccard counted as a duplicate" in text
    again = load_config(PretrainConfig, "pretrain", write(tmp_path, text), base="paper")
    assert again == config
