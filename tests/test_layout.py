"""The shape of the code: dependencies point one way, and no module imports its way back to itself."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "broker", "consumers")
COMPOSITION_ROOTS = frozenset({"consumers.cli", "consumers.testing"})
"""Modules that put the API and the consumers together (the `orderlane` command, the in-process test harness):
the only ones in consumers/ allowed to import api/."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (PROJECT_ROOT / package).rglob("*.py")}


def imported(path: Path) -> Iterator[str]:
    """Every project module `path` imports, at its top, in a function or under TYPE_CHECKING alike."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        yield from (name for name in names if name in modules())


def graph() -> dict[str, set[str]]:
    return {name: set(imported(path)) - {name} for name, path in modules().items()}


def test_broker_imports_neither_the_api_nor_the_consumers() -> None:
    wrong = {(name, dep) for name, deps in graph().items() if name.startswith("broker") for dep in deps}
    assert {(name, dep) for name, dep in wrong if not dep.startswith("broker")} == set()


def test_the_api_and_the_consumers_do_not_import_each_other_outside_the_composition_roots() -> None:
    crossing = {
        (name, dep)
        for name, deps in graph().items()
        for dep in deps
        if name.split(".")[0] in ("api", "consumers")
        and dep.split(".")[0] in ("api", "consumers")
        and name.split(".")[0] != dep.split(".")[0]
    }
    assert {(name, dep) for name, dep in crossing if name not in COMPOSITION_ROOTS} == set()
    assert all(name.startswith("consumers") for name, _ in crossing), "the API never imports the consumers"


def test_no_module_imports_its_way_back_to_itself() -> None:
    edges = graph()
    for package in PACKAGES:  # a package's __init__ re-exports its modules: that is not a way back
        for name in edges:
            edges[name].discard(package)
    cycles = [cycle for start in edges if (cycle := path_back(edges, start))]
    assert cycles == []


def path_back(edges: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from `start` back to `start`, if there is one (depth-first)."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, chain = stack.pop()
        for dep in edges.get(name, ()):
            if dep == start:
                return [*chain, dep]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*chain, dep]))
    return None
