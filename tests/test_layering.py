"""The layers import one way (DESIGN.md): offload <- planner <- domain <- cli.

An ``ast`` walk over every module of the package, imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import swapseg

ROOT = Path(swapseg.__file__).parent
MAX_LINES = 400

#: package -> the swapseg packages it may import (besides itself and third parties)
ALLOWED = {
    "offload": {"swapseg.offload", "swapseg.errors"},
    "planner": {"swapseg.offload", "swapseg.errors", "swapseg.planner", "swapseg.sizes"},
}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, imported module, relative level) of every import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.module or "", node.level))
    return out


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def violations(path: Path) -> list[str]:
    rel = path.relative_to(ROOT.parent)
    layer = path.relative_to(ROOT).parts[0]
    bad = []
    for line, name, level in imports(path):
        if level:
            bad.append(f"{rel}:{line}: relative import")
        elif layer in ALLOWED and (name == "swapseg" or name.startswith("swapseg.")) \
                and not _allowed(name, ALLOWED[layer]):
            bad.append(f"{rel}:{line}: {layer} imports {name}")
    return bad


def test_the_walk_finds_function_level_and_relative_imports(tmp_path: Path) -> None:
    # the checker itself must be able to fail
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import swapseg.training.loop\n    from . import x\n")
    found = imports(f)
    assert (2, "swapseg.training.loop", 0) in found and (3, "", 1) in found
    assert not _allowed("swapseg.training.loop", ALLOWED["planner"])
    assert _allowed("swapseg.offload.policy", ALLOWED["planner"])
    assert not _allowed("swapseg.offloadx", ALLOWED["offload"])


def test_the_layers_are_there() -> None:
    mods = {p.relative_to(ROOT).parts[0] for p in _modules()}
    assert {"offload", "planner", "models", "training", "experiments", "cli"} <= mods
    assert len([p for p in _modules() if p.relative_to(ROOT).parts[0] == "offload"]) > 5


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    assert violations(path) == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES})"
