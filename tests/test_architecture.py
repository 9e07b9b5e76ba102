"""The shape of src/: commands on top, parts below, one owner per concern.

Read from the source with ast: no part imports a command, no command imports another, no import
cycles, and no function longer than about 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = {"train", "ensemble", "tune", "folds", "score", "demo", "bench", "kaggle_kernel", "report", "probe",
            "ledger", "pseudo", "average"}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(SRC.glob("*.py")) if p.stem != "__init__"}


def _imports(tree: ast.Module) -> set[str]:
    """src modules imported anywhere in a module (top level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("src."):
                found.add(node.module.split(".")[1])
            elif node.module == "src":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("src."))
    return found


def test_the_modules_are_found():
    assert {"train", "trainer", "engine", "runtime", "runs", "members", "ensemble"} <= set(_modules())


def test_no_module_imports_a_command():
    graph = {name: _imports(tree) for name, tree in _modules().items()}
    offenders = {name: sorted(deps & COMMANDS) for name, deps in graph.items() if deps & COMMANDS}
    assert offenders == {}, "commands are on top: parts and other commands must not import them"


def test_no_import_cycles():
    graph = {name: _imports(tree) for name, tree in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]) if dep in path
                            else f"import cycle through {dep}")
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__"))
def test_functions_are_short(name):
    tree = ast.parse((SRC / f"{name}.py").read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
