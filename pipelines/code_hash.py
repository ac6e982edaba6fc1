"""The code a stage runs, as one hash: every first-party module its function reaches, and the data files they read.

A cached output is only as trustworthy as this hash is complete, and only as useful as it is
blind to what does not run: a module is hashed as its syntax tree without docstrings, so a
comment, a docstring or a reformatting keeps every fingerprint, while any change to what the code
does (a constant, a name, an operator) makes a new one. Imports are followed in the
source (not by running it), through every first-party package (`operators`, `model`, `infra`,
`pipelines`), inside functions too; a package's `__init__` counts, as it runs on import. A
module that reads files shipped with the code (a lexicon, benchmark subsets) lists them in a
module-level `DATA_FILES`, and their bytes join the hash. A `functools.partial` is hashed as the
function it wraps plus its bound arguments.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

FIRST_PARTY = frozenset({"operators", "model", "infra", "pipelines"})
HASH_LENGTH = 16


def function_hash(fn: Callable[..., Any]) -> str:
    """Hash of the source and data files that `fn` reaches (and, for a partial, its bound arguments)."""
    bound: list[Any] = []
    while isinstance(fn, functools.partial):
        bound.append({"args": [repr(a) for a in fn.args], "kwargs": {k: repr(v) for k, v in sorted(fn.keywords.items())}})
        fn = fn.func
    digest = hashlib.sha256(module_tree_hash(fn.__module__).encode())
    digest.update(f"{fn.__module__}.{fn.__qualname__}".encode())
    digest.update(json.dumps(bound, sort_keys=True).encode())
    return digest.hexdigest()[:HASH_LENGTH]


@cache
def module_tree_hash(module_name: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(reached_modules(module_name)):
        digest.update(name.encode())
        digest.update(behaviour_text(_module_path(name).read_text(encoding="utf-8")).encode())
        for data_file in _declared_data_files(name):
            digest.update(str(data_file.name).encode())
            digest.update(data_file.read_bytes())
    return digest.hexdigest()[:HASH_LENGTH]


def behaviour_text(source: str) -> str:
    """The module's syntax tree without docstrings or positions: what the code does, not how it reads.

    Comments never reach the tree; a docstring is the first statement of a module, class or
    function body when it is a bare string, and is dropped here."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and _has_docstring(node):
            node.body = node.body[1:]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _has_docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def reached_modules(root: str) -> set[str]:
    """`root`, its parent packages and every first-party module they import, transitively."""
    seen: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_parents(name))
        tree = ast.parse(_module_path(name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for imported in _imported_names(node, name):
                if imported.split(".")[0] in FIRST_PARTY and _is_module(imported):
                    pending.append(imported)
    return seen


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported_names(node: ast.AST, importer: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = importer.rsplit(".", node.level)[0]
            base = f"{package}.{base}" if base else package
        # `from operators.data import dedup` names a module; `from operators.x import f` names one too.
        return [base] + [f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")]
    return []


def _declared_data_files(module_name: str) -> list[Path]:
    module = importlib.import_module(module_name)
    files = [Path(f) for f in getattr(module, "DATA_FILES", ())]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{module_name}.DATA_FILES lists files that do not exist: {missing}")
    return sorted(files)


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
