"""Pipeline config: layers of YAML and `--set` overrides over the schema's defaults, validated at once.

    schema defaults (the paper's)             --base-config paper
      < the base config                       the pipeline's shipped demo, or --base-config FILE|NAME
      < --config FILE|NAME                    holds only the keys it changes
      < --set KEY=VALUE ...                   one value each

A config file is a path, or the name of one shipped in pipelines/configs/ for the pipeline
(`chat_smollm2` is configs/chat_smollm2.yaml; a pipeline's shipped configs start with its name);
a file that exists wins over a shipped name.

Mappings merge key by key; a list replaces the list under it (a config's `ingest.sources` is
the whole list). Paths a config names (fields marked `config_path`) are resolved against the
directory of the file that set them (`--set` values against the working directory), so a
config and its data travel together. A mistake is reported naming the layer that made it.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

CONFIG_DIR = Path(__file__).parent / "configs"
PAPER_BASE = "paper"  # --base-config paper: no base file, the schema's own (the paper's) defaults
SCHEMA_HINT = "`llama2 config {pipeline}` prints every key with its description"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field, what is allowed, and where it was set."""


@dataclass(frozen=True)
class Layer:
    label: str  # how a message names it: a file path, or "--set KEY=VALUE"
    data: dict[str, Any]
    base_dir: Path  # relative paths in it are resolved against this


def load_config(
    model: type[BaseModel],
    pipeline: str,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: str | None = None,
    default_file: str | None = None,
) -> BaseModel:
    """The validated config of `pipeline`: `base` (a file or shipped name, `"paper"`, or None for
    `default_file`), then `config_file` (a file or shipped name), then `overrides`."""
    layers = []
    base_file = (None if base == PAPER_BASE else find_config(base, pipeline) if base
                 else (CONFIG_DIR / default_file if default_file else None))
    if config_file is not None:
        config_file = find_config(config_file, pipeline)
    for path in (base_file, config_file):
        if path is not None:
            layers.append(Layer(str(path), _read_yaml(path), path.resolve().parent))
    for item in overrides:
        key, value = _parse_override(item)
        layers.append(Layer(f"--set {item}", _nest(key, value), Path.cwd()))

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for layer in layers:
        resolve_config_paths(model, layer.data, layer.base_dir)
        _merge(merged, layer.data, origin, layer.label, ())
    try:
        return model.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, origin, pipeline)) from None


def shipped_configs(pipeline: str) -> dict[str, Path]:
    """The configs shipped for `pipeline` by name: pipelines/configs/<pipeline>_*.yaml."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob(f"{pipeline}_*.yaml"))}


def shipped_name(reference: str | Path, pipeline: str) -> str | None:
    """`reference` when it names a config shipped for `pipeline` and is not a file of its own, else None."""
    name = str(reference)
    return name if name in shipped_configs(pipeline) and not Path(name).expanduser().is_file() else None


def find_config(reference: str | Path, pipeline: str) -> Path:
    """The file a --config / --base-config value means: an existing file, else the shipped config of that name.
    A name that is neither says which configs are shipped."""
    if (name := shipped_name(reference, pipeline)) is not None:
        return shipped_configs(pipeline)[name]
    path = Path(reference).expanduser()
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path  # a path: read as it is (a missing one is named when it is read)
    shipped = ", ".join(shipped_configs(pipeline)) or "none"
    raise ConfigError(f"unknown config {str(reference)!r}: not a file, nor a config shipped for {pipeline} "
                      f"(shipped: {shipped}); give a YAML file's path or a shipped name")


def format_validation_error(
    err: ValidationError, model: type[BaseModel], origin: dict[tuple[str, ...], str], pipeline: str
) -> str:
    """One line per problem: where it was set, the field, what is wrong and what is allowed."""
    lines = []
    for problem in err.errors():
        loc = tuple(str(part) for part in problem["loc"])
        field = ".".join(loc) or "(root)"
        where = _origin_of(loc, origin)
        if problem["type"] == "extra_forbidden":
            message = f"unknown key{_suggestion(model, loc)}; {SCHEMA_HINT.format(pipeline=pipeline)}"
        else:
            message = problem["msg"].removeprefix("Value error, ")
            if not isinstance(problem.get("input"), (dict, list)):
                message += f" (got {problem.get('input')!r})"
        lines.append(f"{where}: {field}: {message}" if where else f"{field}: {message}")
    return "invalid config: " + lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)


def resolve_config_paths(model: type[BaseModel], data: Any, base_dir: Path) -> None:
    """Make every relative path in `data` under a field marked `config_path` absolute against `base_dir`."""
    if not isinstance(data, dict):
        return
    for name, info in model.model_fields.items():
        if name not in data or data[name] is None:
            continue
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("config_path"):
            data[name] = _absolute(data[name], base_dir)
            continue
        for nested in _models_in(info.annotation):
            for item in _nested_values(info.annotation, data[name]):
                resolve_config_paths(nested, item, base_dir)


def _nested_values(annotation: Any, value: Any) -> list[Any]:
    """The values of a field that are themselves sections: the list's items, the dict's values, or the value."""
    container = typing.get_origin(annotation)
    if container is list and isinstance(value, list):
        return value
    if container is dict and isinstance(value, dict):
        return list(value.values())
    return [value]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _absolute(value: Any, base_dir: Path) -> Any:
    if isinstance(value, list):
        return [_absolute(v, base_dir) for v in value]
    if not isinstance(value, str) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _merge(into: dict[str, Any], layer: dict[str, Any], origin: dict, label: str, prefix: tuple[str, ...]) -> None:
    """Merge `layer` into `into` key by key, noting in `origin` which layer set each leaf value."""
    for key, value in layer.items():
        loc = (*prefix, str(key))
        if isinstance(value, dict) and value:
            if not isinstance(into.get(key), dict):
                into[key] = {}
                _forget(origin, loc)
            _merge(into[key], value, origin, label, loc)
        else:
            into[key] = value
            _forget(origin, loc)
            origin[loc] = label


def _forget(origin: dict[tuple[str, ...], str], loc: tuple[str, ...]) -> None:
    for known in [k for k in origin if k[: len(loc)] == loc]:
        del origin[known]


def _origin_of(loc: tuple[str, ...], origin: dict[tuple[str, ...], str]) -> str | None:
    """The layer that set `loc` (or a section above it); for a whole section, every layer that set a key in it."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return origin[loc[:end]]
    labels = dict.fromkeys(label for key, label in origin.items() if key[: len(loc)] == loc)
    return ", ".join(labels) or None


def _suggestion(model: type[BaseModel], loc: tuple[str, ...]) -> str:
    """' (did you mean threshold?)' for a misspelt key, from the fields at that level."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            found = _models_in(current.model_fields[part].annotation)
            current = found[0] if found else None
        elif part.isdigit():
            continue
        else:
            return ""
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return ""
    close = difflib.get_close_matches(loc[-1], list(current.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
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


def _nest(key: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data
