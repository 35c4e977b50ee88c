"""The planner's modules import one another without a circle, all at module top level."""

import ast
from pathlib import Path

import swapseg.planner

PLANNER = Path(swapseg.planner.__file__).parent


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(planner modules imported at top level, our modules imported inside functions)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swapseg.planner."):
            top.add(node.module.rsplit(".", 1)[1])
    inner = [n.module or "" for f in ast.walk(tree)
             if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, ast.ImportFrom)
             and (n.module or "").startswith("swapseg")]
    return top, inner


def test_planner_modules_import_without_a_circle_and_at_the_top():
    graph = {}
    for path in sorted(PLANNER.glob("*.py")):
        if path.stem == "__init__":
            continue
        top, inner = _imports(path)
        assert inner == [], f"{path.name} imports {inner} inside a function"
        graph[path.stem] = top
    assert "profiles" in graph and "local" in graph and "devices" not in graph
    state: dict[str, int] = {}

    def visit(mod: str, stack: list[str]) -> None:
        if state.get(mod) == 2:
            return
        assert state.get(mod) != 1, f"import circle: {' -> '.join([*stack, mod])}"
        state[mod] = 1
        for dep in graph[mod]:
            visit(dep, [*stack, mod])
        state[mod] = 2

    for mod in graph:
        visit(mod, [])
    assert graph["profiles"] == set()  # the record and cost model depend on no measurement
