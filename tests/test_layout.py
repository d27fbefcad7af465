"""The layout holds: subpackages import only what their `__init__` allows, no import cycle (function-level imports
included), no module over 400 lines, and every subpackage says what it holds and what it may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "iabn_zoo"
MAX_LINES = 400
BELOW_FRONT_DOOR = {"errors", "system", "layers", "models", "weights", "data"}
# What each part of the library may import (besides itself and the package root's __version__).
ALLOWED = {
    "errors": set(),
    "system": {"errors"},
    "layers": {"errors", "system"},
    "models": {"errors", "layers"},
    "weights": {"errors", "system", "layers"},
    "data": {"errors", "system"},
    "factory": BELOW_FRONT_DOOR,
    "hub": {"factory", "models", "weights", "errors"},
    "tasks": BELOW_FRONT_DOOR | {"factory"},
    "train": BELOW_FRONT_DOOR | {"factory", "tasks"},
    "deploy": BELOW_FRONT_DOOR | {"factory", "tasks"},
    "demo": BELOW_FRONT_DOOR | {"factory", "tasks", "train", "deploy"},
    "cli": BELOW_FRONT_DOOR | {"factory", "hub", "tasks", "train", "deploy"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """Every iabn_zoo module `name` imports, at any depth of its code (function-level imports included)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def part(name: str) -> str:
    """The part of the library a module belongs to: its subpackage, or the top-level module itself."""
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


GRAPH = {name: imported_modules(name) for name in MODULES}


@pytest.mark.parametrize("name", [n for n in MODULES if part(n) != "__init__"])
def test_imports_follow_the_layering(name):
    allowed = ALLOWED[part(name)] | {part(name)}
    wrong = sorted(target for target in GRAPH[name] if target != "iabn_zoo" and part(target) not in allowed)
    assert not wrong, f"{name} imports {wrong}; {part(name)} may import only {sorted(ALLOWED[part(name)])}"


def test_no_import_cycle():
    def reaches(start: str, goal: str) -> bool:
        todo, seen = [start], set()
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(t for t in GRAPH[current] if not (MODULES[t].name == "__init__.py"
                                                               and current.startswith(t + ".")))
        return False

    cycles = [f"{a} -> {b}" for a in GRAPH for b in GRAPH[a]
              if not (MODULES[b].name == "__init__.py" and a.startswith(b + ".")) and reaches(b, a)]
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_is_too_long():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("name", [n for n, p in MODULES.items() if p.name == "__init__.py" and n != "iabn_zoo"])
def test_every_subpackage_says_what_it_holds_and_may_import(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text())) or ""
    assert doc and ("May import" in doc or "may import" in doc.lower()), f"{name}/__init__.py: no import rule in {doc!r}"


def test_the_top_level_holds_only_the_front_modules():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py", "factory.py", "hub.py"], top
