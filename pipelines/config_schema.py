"""A config as commented YAML: every key with its value and its description, for `llama2 config`.

The descriptions are the pydantic fields' own, so the printed schema cannot drift from the one
that validates.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel


def render_config(config: BaseModel, title: str) -> str:
    """YAML that loads back to `config`'s values, each key preceded by `# description`."""
    return f"# {title}\n" + "".join(_lines(config, 0))


def _lines(model: BaseModel, indent: int) -> list[str]:
    pad = "  " * indent
    out = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if info.description:
            out.append(f"{pad}# {' '.join(info.description.split())}\n")
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:\n")
            out.extend(_lines(value, indent + 1))
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out.append(f"{pad}{name}:\n")
            for item in value:
                item_lines = _lines(item, indent + 2)
                first = next(i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#"))
                item_lines[first] = f"{pad}  - {item_lines[first].lstrip()}"
                out.extend(item_lines)
        else:
            out.append(f"{pad}{name}: {_scalar(value)}\n")
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    dumped = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000, sort_keys=True).strip()
    return dumped.removesuffix("\n...").removesuffix(" ...")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
