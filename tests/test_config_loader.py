"""Config files layer over defaults, --set overrides them, and mistakes name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config_loader import ConfigError, load_config


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    paths: list[str]
    format: Literal["jsonl", "parquet", "text"]


class Ingest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[Source] = Field(default_factory=list)
    max_doc_bytes: int = 1000


class Dedup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = 112


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ingest: Ingest = Field(default_factory=Ingest)
    dedup: Dedup = Field(default_factory=Dedup)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_file_needs_only_the_keys_it_changes(tmp_path: Path) -> None:
    config = load_config(Config, write(tmp_path, "dedup:\n  threshold: 0.7\n"))
    assert config.dedup.threshold == 0.7
    assert config.dedup.num_perm == 112
    assert config.ingest.max_doc_bytes == 1000


def test_set_overrides_nested_values_with_yaml_typing(tmp_path: Path) -> None:
    config = load_config(Config, write(tmp_path, "dedup:\n  threshold: 0.7\n"),
                         ["dedup.threshold=0.9", "ingest.max_doc_bytes=5"])
    assert config.dedup.threshold == 0.9
    assert config.ingest.max_doc_bytes == 5


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dedup\.treshold: unknown key"):
        load_config(Config, write(tmp_path, "dedup:\n  treshold: 0.7\n"))


def test_bad_value_names_the_field_and_the_allowed_values(tmp_path: Path) -> None:
    text = "ingest:\n  sources:\n    - {name: a, paths: [x.jsonl], format: csv}\n"
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.format: Input should be 'jsonl', 'parquet' or 'text'"):
        load_config(Config, write(tmp_path, text))


def test_out_of_range_override_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dedup\.threshold: Input should be less than or equal to 1"):
        load_config(Config, None, ["dedup.threshold=3"])


def test_malformed_override_is_explained() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(Config, None, ["dedup.threshold"])


def test_relative_source_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    text = "ingest:\n  sources:\n    - {name: a, paths: [data/*.jsonl, /abs/b.jsonl], format: jsonl}\n"
    config = load_config(Config, write(tmp_path, text))
    assert config.ingest.sources[0].paths == [str(tmp_path.resolve() / "data/*.jsonl"), "/abs/b.jsonl"]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Config, tmp_path / "nope.yaml")
