"""The house rules of the layout (README, "Where things live"): packages by concern, each entered through its
``__init__``, and no circle in the import graph."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("bot", "adapters", "bench")


def _modules() -> Iterator[tuple[str, Path]]:
    for top in CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path, *, module_level_only: bool) -> Iterator[tuple[str, int]]:
    """The modules ``path`` imports, with their line; only statements run at import time, if asked."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:  # ``from bot.store import sqlite`` imports the module bot.store.sqlite
                yield f"{node.module}.{alias.name}", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def _packages() -> set[str]:
    return {name for name, path in _modules() if path.name == "__init__.py"}


def test_no_module_reaches_into_another_package() -> None:
    """Outside its package, a package is used through what its ``__init__`` exports, never its modules."""
    packages = _packages()
    modules = {name for name, _ in _modules()}
    offences = []
    for name, path in _modules():
        for target, line in _imports(path, module_level_only=False):
            if target not in modules or target in packages:
                continue
            owner = target.rpartition(".")[0]
            inside = name == owner or name.startswith(owner + ".")
            if owner in packages and owner not in CODE and not inside:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {target}; use {owner}")
    assert offences == []


def test_the_import_graph_has_no_circles() -> None:
    """What runs at import time: every module-level import, and the packages an import enters on its way (a
    package's ``__init__`` runs before any of its modules, except for the modules inside it)."""
    modules = {name for name, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in _modules():
        edges = set()
        for target, _ in _imports(path, module_level_only=True):
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                entered = ".".join(parts[:depth])
                if entered in modules and entered != name and not name.startswith(entered + "."):
                    edges.add(entered)
        graph[name] = edges
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in an interpreter holding none of ours: no order of imports can hide a circle."""
    names = [name for name, _ in _modules() if not name.endswith("__main__")]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        f"    for loaded in [m for m in sys.modules if m.split('.')[0] in {CODE!r}]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
