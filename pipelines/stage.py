"""A stage: a named step of a pipeline DAG, and the fingerprint that decides if it must run.

fingerprint = sha256(stage name, code version, canonical config section, input identity,
                     upstream fingerprints)

Same inputs and same config give the same fingerprint, and a finished output under that
fingerprint means there is nothing to do.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from operators.stage_io import StageIO, StageResult

FINGERPRINT_LENGTH = 16

StageFn = Callable[[Any, StageIO], StageResult]


@dataclass(frozen=True)
class Stage:
    """One node of a pipeline DAG.

    `run` is the operator's stage function; `section` the pipeline config field holding its
    config. `input_identity` describes data read from outside the store (e.g. the files ingest
    reads) so that changing them changes the fingerprint.
    """

    name: str
    run: StageFn
    upstream: tuple[str, ...] = ()
    section: str = ""
    input_identity: Callable[[Any], Any] | None = None
    description: str = ""
    unit: str = field(default="documents")

    @property
    def config_section(self) -> str:
        return self.section or self.name

    def code_version(self) -> str:
        """Hash of the source of the operator module and every `operators` module it imports."""
        return _module_tree_hash(self.run.__module__)

    def fingerprint(self, config: BaseModel, upstream_fingerprints: Mapping[str, str]) -> str:
        identity = self.input_identity(config) if self.input_identity else None
        payload = {
            "stage": self.name,
            "code": self.code_version(),
            "config": config.model_dump(mode="json"),
            "inputs": identity,
            "upstream": dict(sorted(upstream_fingerprints.items())),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:FINGERPRINT_LENGTH]


@cache
def _module_tree_hash(module_name: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(_operator_modules(module_name)):
        digest.update(name.encode())
        digest.update(_module_path(name).read_bytes())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def _operator_modules(root: str) -> set[str]:
    """`root` plus the `operators.*` modules it imports, transitively (read from source, not run)."""
    seen: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(_module_path(name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for imported in _imported_names(node, name):
                if imported.split(".")[0] == "operators" and _is_module(imported):
                    pending.append(imported)
    return seen


def _imported_names(node: ast.AST, importer: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = importer.rsplit(".", node.level)[0]
            base = f"{package}.{base}" if base else package
        # `from operators import dedup` names a module; `from operators.x import f` names one too.
        return [base] + [f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")]
    return []


def _is_module(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def _module_path(name: str) -> Path:
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None):
        return Path(loaded.__file__)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"cannot locate the source of module {name}")
    return Path(spec.origin)
