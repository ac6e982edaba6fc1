"""The package rules of docs/CONTRACTS.md, checked on the source: roles not stage names, no stage
module importing another, no MLflow below pipelines/infra, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.config_loader import load_config
from pipelines.registry import pipeline_specs

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("operators", "model", "infra", "pipelines")


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


ALL_MODULES = {name: path for package in FIRST_PARTY for name, path in modules(package).items()}


def imports(module: str, path: Path, module_level_only: bool = False) -> set[str]:
    """First-party modules `module` imports (the longest existing module name of each import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _module_level(tree.body) if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in ALL_MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run on import: the top level and the bodies of top-level if/try blocks."""
    out = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            out.extend(_module_level(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])))
    return out


@pytest.fixture(scope="module")
def demo_pipelines():
    return [spec.build(load_config(spec.config_model, spec.name, None, default_file=spec.default_config))
            for spec in pipeline_specs().values()]


def stage_modules(pipelines) -> dict[str, set[str]]:
    """Module of each stage function -> the names of the stages it serves."""
    found: dict[str, set[str]] = {}
    for pipeline in pipelines:
        for stage in pipeline.stages:
            found.setdefault(stage.run.__module__, set()).add(stage.name)
    return found


def test_no_operator_module_names_another_stage(demo_pipelines) -> None:
    names = {stage.name for pipeline in demo_pipelines for stage in pipeline.stages}
    offenders = []
    for module, path in modules("operators").items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in names:
                    offenders.append(f"{module}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_no_stage_module_imports_another_stage_module(demo_pipelines) -> None:
    owners = stage_modules(demo_pipelines)
    crossings = [f"{module} -> {other}" for module in owners
                 for other in imports(module, ALL_MODULES[module]) if other in owners]
    assert crossings == []


def test_operators_and_model_never_import_mlflow() -> None:
    offenders = [name for package in ("operators", "model") for name, path in modules(package).items()
                 if "mlflow" in {n.split(".")[0] for n in _imported_top_levels(path)}]
    assert offenders == []


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_dependencies_point_down_only() -> None:
    allowed = {"model": {"model"}, "infra": {"infra"}, "operators": {"operators", "model", "infra"},
               "pipelines": set(FIRST_PARTY)}
    upward = [f"{module} -> {other}" for module, path in ALL_MODULES.items() for other in imports(module, path)
              if other.split(".")[0] not in allowed[module.split(".")[0]]]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = {module: imports(module, path, module_level_only=True) for module, path in ALL_MODULES.items()}
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components
