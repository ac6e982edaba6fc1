"""Pipeline config: YAML layered over the schema's defaults, then `--set` overrides, validated.

Relative paths in a config file are resolved against that file's directory, so a config and
its data can travel together (e.g. in a Ray job's working directory).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and what is allowed."""


def load_config(
    model: type[BaseModel],
    path: Path | None,
    overrides: Iterable[str] = (),
    default_file: str | None = None,
) -> BaseModel:
    """Read `path` (or the shipped `default_file`), apply `KEY=VALUE` overrides, validate."""
    source = path or (CONFIG_DIR / default_file if default_file else None)
    data: dict[str, Any] = {}
    if source is not None:
        data = _read_yaml(source)
        _resolve_source_paths(data, source.parent)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
    _resolve_source_paths(data, Path.cwd())
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def format_validation_error(err: ValidationError, source: Path | None) -> str:
    where = f" in {source}" if source else ""
    lines = [f"invalid config{where}:"]
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(root)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see `llama2 stages --help` for the schema)"
        lines.append(f"  {field}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. dedup.threshold=0.7), got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _resolve_source_paths(data: dict[str, Any], base: Path) -> None:
    """Make `ingest.sources[*].paths` absolute against `base` (glob patterns included)."""
    sources = (data.get("ingest") or {}).get("sources") if isinstance(data.get("ingest"), dict) else None
    if not isinstance(sources, list):
        return
    for source in sources:
        if isinstance(source, dict) and isinstance(source.get("paths"), list):
            source["paths"] = [
                str((base / p).resolve()) if isinstance(p, str) and not _is_uri(p) and not Path(p).is_absolute() else p
                for p in source["paths"]
            ]
        elif isinstance(source, dict) and isinstance(source.get("paths"), str):
            source["paths"] = [source["paths"]]
            _resolve_source_paths({"ingest": {"sources": [source]}}, base)


def _is_uri(path: str) -> bool:
    return "://" in path
