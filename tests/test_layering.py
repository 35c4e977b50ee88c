"""The layers import one way (docs/ and the README's layout): offload <- planner <- domain <- cli.

An ``ast`` walk over every module of the package, imports inside functions included:

- every package and root module has a rule naming what it may import (``ALLOWED``,
  ``ROOT_ALLOWED``), and a new one fails until it gets one;
- the import graph of ``swapseg/`` (module-level and function-level imports alike) has no
  circle;
- imports sit at the top of modules: a function-level import is only for an optional
  third-party package (``OPTIONAL``), never for a swapseg module or a hard dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import swapseg

ROOT = Path(swapseg.__file__).parent
MAX_LINES = 400


def _modules(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _sw(*names: str) -> set[str]:
    return {f"swapseg.{n}" for n in names}


#: swapseg/<name>.py: small shared modules. The leaf is ``errors`` (it imports nothing of
#: ours); the others import only root modules, ``plotting`` the engine's figure helpers too.
ROOT_MODULES = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
ANY_ROOT = _sw(*ROOT_MODULES) | {"swapseg"}  # the last one: swapseg/__init__.py itself
PACKAGES = ("offload", "planner", "models", "data", "evaluation", "training", "predict",
            "integrations", "experiments", "cli")

#: package -> the swapseg modules it may import (besides third parties). Lowest first:
#: the engine and the planner name no root module but errors, the domain
#: packages any root module; evaluation scores anyone's predictions (data only), predict
#: reads a training run, experiments compose everything below the CLI.
ALLOWED = {
    "offload": _sw("offload", "errors"),
    "planner": _sw("planner", "offload", "errors"),
    "models": _sw("models", "offload") | ANY_ROOT,
    "data": _sw("data") | ANY_ROOT,
    "evaluation": _sw("evaluation", "data") | ANY_ROOT,
    "training": _sw("training", "offload", "planner", "models", "data", "evaluation")
    | ANY_ROOT,
    "predict": _sw("predict", "training", "models", "data", "evaluation") | ANY_ROOT,
    "integrations": _sw("integrations", "offload", "planner", "models", "data") | ANY_ROOT,
    "experiments": _sw(*(p for p in PACKAGES if p != "cli")) | ANY_ROOT,
    "cli": _sw(*PACKAGES) | ANY_ROOT,
}

#: root module -> the swapseg modules it may import.
ROOT_ALLOWED = {
    "__init__": set(),  # `import swapseg.offload` must not pull the domain in
    "errors": set(),
    "plotting": (ANY_ROOT - _sw("plotting")) | _sw("offload.figure"),
}
ROOT_DEFAULT = (ANY_ROOT - _sw("plotting")) | _sw("offload.sizes")  # the size grammar

#: third-party packages a function may import (optional or heavy; their absence or cost
#: must not reach users who never call that function).
OPTIONAL = {"matplotlib", "monai", "nnunetv2", "lightning", "ignite", "batchgenerators"}

#: Modules that import inside functions on purpose, and why (beside each entry). The list
#: must match the code exactly: a new late import needs a reason here.
LATE: dict[str, set[str]] = {
    # these import nnunetv2 (optional): at the top they would break every command
    "cli/nnunet_cmd.py": {"swapseg.integrations.nnunet.experiment",
                          "swapseg.integrations.nnunet.predict",
                          "swapseg.integrations.nnunet.trainer"},
    # a probe process sets its memory cap before torch and the model are imported
    "experiments/largest_probe.py": {"torch", "swapseg.experiments.methods_bench",
                                     "swapseg.models.registry", "swapseg.offload",
                                     "swapseg.offload.apply", "swapseg.offload.engine",
                                     "swapseg.offload.measure", "swapseg.offload.recompute",
                                     "swapseg.offload.timeline"},
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path = ROOT) -> bool:
    """Whether ``name`` (``swapseg.x.y``) is a module or package of the tree at ``root``."""
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a function (at any depth)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import,
                                                                         ast.ImportFrom))}
    return inside


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str, int, bool]]:
    """(line, imported module, relative level, inside a function) of every import in the
    file. ``from swapseg.x import y`` names ``swapseg.x.y`` when y is a module of ours."""
    tree = ast.parse(path.read_text(), str(path))
    in_function = _function_nodes(tree)
    out = []
    for node in ast.walk(tree):
        fn = id(node) in in_function
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, 0, fn) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names
                    if base.split(".")[0] == root.name and not node.level
                    and _is_module(f"{base}.{a.name}", root)]
            out += [(node.lineno, s, 0, fn) for s in subs]
            if len(subs) < len(node.names):
                out.append((node.lineno, base, node.level, fn))
    return out


def _ours(name: str, root: Path = ROOT) -> bool:
    return name == root.name or name.startswith(root.name + ".")


def _allowed(name: str, allowed: set[str]) -> bool:
    """``name`` is one of ``allowed`` or inside one (the package root only as itself)."""
    return any(name == a or ("." in a and name.startswith(a + ".")) for a in allowed)


def rule(path: Path, root: Path = ROOT) -> set[str]:
    """What the module at ``path`` may import of ours."""
    parts = path.relative_to(root).parts
    if len(parts) == 1:
        return ROOT_ALLOWED.get(path.stem, ROOT_DEFAULT)
    if parts[0] not in ALLOWED:
        raise AssertionError(f"{root.name}/{parts[0]}/ has no rule in ALLOWED: add one")
    return ALLOWED[parts[0]]


def violations(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root.parent)
    allowed = rule(path, root)
    bad = []
    for line, name, level, _ in imports(path, root):
        if level:
            bad.append(f"{rel}:{line}: relative import")
        elif _ours(name, root) and not _allowed(name, allowed):
            bad.append(f"{rel}:{line}: {rel.parts[1].removesuffix('.py')} imports {name}")
    return bad


def function_level(path: Path, root: Path = ROOT) -> set[str]:
    """The modules a function of ``path`` imports that should be at the top."""
    return {name for _, name, level, fn in imports(path, root)
            if fn and (level or name.split(".")[0] not in OPTIONAL)}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of ours it imports, anywhere in it."""
    return {_module_name(p, root): {n for _, n, lvl, _ in imports(p, root)
                                    if not lvl and _ours(n, root) and _is_module(n, root)}
            for p in _modules(root)}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (or a module
    importing itself), as the list of its modules in import order, first repeated."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = {stack.pop()}
            while v not in comp:
                comp.add(stack.pop())
            if len(comp) > 1 or v in g.get(v, ()):
                comps.append(comp)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return [_circle(g, comp) for comp in comps]


def _circle(g: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path inside ``comp`` from its first module back to itself."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g.get(v, set()) & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")  # pragma: no cover


# --- the checkers can fail --------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A throwaway package ``swapseg`` under ``tmp_path`` with the given modules."""
    root = tmp_path / "swapseg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_walk_finds_function_level_and_relative_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"training/__init__.py": "", "training/loop.py": "",
                            "m.py": "def f():\n    import swapseg.training.loop\n"
                                    "    from . import x\n"
                                    "from swapseg import training\n"})
    found = imports(root / "m.py", root)
    assert (2, "swapseg.training.loop", 0, True) in found and (3, "", 1, True) in found
    assert (4, "swapseg.training", 0, False) in found  # a package named from its parent
    assert function_level(root / "m.py", root) == {"swapseg.training.loop", ""}
    assert not _allowed("swapseg.training.loop", ALLOWED["planner"])
    assert _allowed("swapseg.offload.policy", ALLOWED["planner"])
    assert not _allowed("swapseg.offloadx", ALLOWED["offload"])
    assert _allowed("swapseg", ALLOWED["cli"]) and not _allowed("swapseg.x", {"swapseg"})


def test_an_upward_import_is_a_violation_in_every_package(tmp_path: Path) -> None:
    upward = {"offload": "swapseg.planner", "planner": "swapseg.models",
              "models": "swapseg.data", "data": "swapseg.evaluation",
              "evaluation": "swapseg.training", "training": "swapseg.predict",
              "predict": "swapseg.experiments", "integrations": "swapseg.training",
              "experiments": "swapseg.cli"}
    files = {f"{p}/m.py": f"import {target}\n" for p, target in upward.items()}
    files["errors.py"] = "import swapseg.offload.sizes\n"
    files["io.py"] = "import swapseg.offload\n"
    root = _tree(tmp_path, files)
    for p, target in upward.items():
        assert violations(root / p / "m.py", root) == [
            f"swapseg/{p}/m.py:1: {p} imports {target}"]
    assert violations(root / "errors.py", root) == ["swapseg/errors.py:1: errors imports "
                                                    "swapseg.offload.sizes"]
    assert violations(root / "io.py", root) == ["swapseg/io.py:1: io imports swapseg.offload"]
    assert not violations(_tree(tmp_path / "ok", {"cli/m.py": "import swapseg.predict\n"})
                          / "cli" / "m.py", tmp_path / "ok" / "swapseg")


def test_a_package_without_a_rule_fails(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"newpkg/m.py": "import os\n"})
    with pytest.raises(AssertionError, match="swapseg/newpkg/ has no rule"):
        violations(root / "newpkg" / "m.py", root)


def test_a_circle_is_found_through_function_level_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "planner/__init__.py": "",
        "planner/a.py": "import swapseg.planner.b\n",
        "planner/b.py": "def f():\n    from swapseg.planner import c\n",
        "planner/c.py": "from swapseg.planner.a import x\n",
        "planner/d.py": "import swapseg.planner.a\n",  # on the way in, not in the circle
        "errors.py": "from swapseg import errors\n"})  # itself
    found = cycles(graph(root))
    assert sorted(found) == [["swapseg.errors", "swapseg.errors"],
                             ["swapseg.planner.a", "swapseg.planner.b", "swapseg.planner.c",
                              "swapseg.planner.a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_only_optional_packages_may_be_imported_in_a_function(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"m.py": "import os\n\n\ndef f():\n    import torch\n"
                                    "    import matplotlib.pyplot\n    import monai\n"})
    assert function_level(root / "m.py", root) == {"torch"}


# --- the package obeys them ---------------------------------------------------------------

def test_the_layers_are_there() -> None:
    mods = {p.relative_to(ROOT).parts[0] for p in _modules() if len(p.relative_to(ROOT).parts) > 1}
    assert mods == set(PACKAGES) == set(ALLOWED)
    assert {"errors", "io", "devices", "progress", "plotting"} <= ROOT_MODULES
    assert len([p for p in _modules() if p.relative_to(ROOT).parts[0] == "offload"]) > 5


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    assert violations(path) == []


def test_the_import_graph_has_no_circle() -> None:
    found = cycles(graph())
    assert found == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_late_imports_name_existing_modules() -> None:
    assert sorted(rel for rel in LATE if not (ROOT / rel).is_file()) == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_at_the_top(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    left = function_level(path)
    if rel in LATE:
        assert left == LATE[rel], (
            f"{rel}: function-level imports now {sorted(left)}; LATE says "
            f"{sorted(LATE[rel])}: hoist them and update (or delete) its entry")
    else:
        assert left == set(), f"{rel}: import at the top of the module: {sorted(left)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES})"
