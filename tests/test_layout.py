"""The package layout shows the pipeline: no import cycles, and each layer imports only the
layers below it (compiler and archive side by side, then deploy, api and cli, with the record and
helpers at the bottom). Read from the source with `ast`, function-level imports and the package
`__init__` modules an import runs included, so a cycle cannot hide behind a deferred import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "microexport"

# Layer of each top-level module or subpackage; a module may import its own layer and lower ones.
# compiler and archive are siblings (neither imports the other): the compiler hands the record to
# the archive through api.py.
LAYERS = {
    "version": 0, "errors": 0, "model": 1, "templating": 1,
    "compiler": 2, "archive": 2, "deploy": 3, "api": 4, "cli": 5, "": 6,
}
# Modules that must run without TVM installed (docs/tir-json.md).
TVM_FREE = ("archive/graph.py", "archive/analyze.py", "archive/tir_json/reader.py",
            "archive/tir_json/spec.py", "model.py", "archive/mlf.py", "archive/mlf_v7.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The microexport modules `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate in MODULES:
                    found.add(candidate)
                elif node.module in MODULES:
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
    return found


def with_parent_packages(importer: str, targets: set[str]) -> set[str]:
    """`targets` plus the packages Python initialises to import them: importing
    `a.b.c` from outside `a.b` runs `a/b/__init__.py` first. (From inside a package its
    `__init__` has already run, so those edges are left out.)"""
    edges = set(targets)
    for target in targets:
        parts = target.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            if package in MODULES and not importer.startswith(package + "."):
                edges.add(package)
    return edges


GRAPH = {name: with_parent_packages(name, imports_of(path)) - {name}
         for name, path in MODULES.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def test_no_relative_imports() -> None:
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{name}: relative imports on lines {relative}"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_only_downwards(module: str) -> None:
    upward = sorted(t for t in GRAPH[module] if layer(t) > layer(module)
                    or (layer(t) == layer(module) and top(t) != top(module)))
    assert not upward, f"{module} (layer {layer(module)}) imports {upward}"


@pytest.mark.parametrize("relative", TVM_FREE)
def test_readers_never_import_tvm(relative: str) -> None:
    tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(n == "tvm" or n.startswith("tvm.") for n in names), relative
