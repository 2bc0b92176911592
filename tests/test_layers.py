"""The package's folders are its layers, and imports point downward only.

language < runtime < explain < host; `engine.errors` and `engine._resources` sit below
them all, and `engine/__init__.py` is the public facade over every layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "engine"
LAYERS = ["language", "runtime", "explain", "host"]
BASE = {"engine.errors", "engine._resources"}


def layer_of(module: str) -> int | None:
    """The rank of a module's layer; -1 for the base modules; None for the facade."""
    if module in BASE:
        return -1
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every `engine...` import, including lazy ones inside
    functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("engine")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "engine":
                out += [(node.lineno, f"engine.{a.name}") for a in node.names]
            elif node.module.startswith("engine."):
                out.append((node.lineno, node.module))
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "_bundled" not in p.parts)


def test_every_module_but_the_facade_and_the_base_lives_in_a_layer() -> None:
    homeless = [
        module_name(p)
        for p in MODULES
        if module_name(p) != "engine" and layer_of(module_name(p)) is None
    ]
    assert homeless == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_downward_only(path: Path) -> None:
    here = module_name(path)
    rank = layer_of(here)
    if rank is None:  # the facade re-exports the public API of every layer
        return
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {target}"
        for line, target in imports_of(path)
        if (their := layer_of(target)) is not None and their > rank
    ]
    assert upward == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "engine" / "language" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from engine.host.cli import main\n", encoding="utf-8")
    (line, target) = imports_of(fake)[0]
    assert (line, target) == (2, "engine.host.cli")
    assert layer_of(target) == 3 > layer_of("engine.language.x") == 0
