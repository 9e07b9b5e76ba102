"""The shape of src/: commands on top, packages below them in a stated order, one owner per concern.

Read from the source with ast, recursing into every package: a command imports packages, never
another command; a package imports only itself and the packages below it in LAYERS; no module
imports a command; there is no import cycle between modules; and no function is longer than about
80 lines. `violations` takes any source root, so the rules are also run against a small tree with
a deliberately wrong import, to see them fail."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Bottom to top: each package may import the ones before it, never one after it.
LAYERS = ["core", "data", "models", "evaluation", "runs", "training", "ensembling", "analysis", "tuning", "kaggle"]
COMMANDS = {"train", "ensemble", "tune", "folds", "score", "demo", "bench", "kaggle_kernel", "report", "probe",
            "ledger", "pseudo", "average", "init"}
MAX_FUNCTION_LINES = 80
# The task owner: the only package that may decide by the kind of task (core/tasks/, one class a kind).
TASK_OWNER = "core.tasks"
KIND_NAMES = {"multiclass", "binary", "multilabel", "ordinal", "topk"}
# What stages used to branch on (flags of the task, or passed in as arguments), and the roles a task
# names for a stage's table (head, splitter, ...): read by a lookup, never tested by an if.
TASK_FLAGS = {"multilabel", "ordinal", "regression", "decides_by_threshold", "kind", "binary", "topk"}
TASK_ROLES = {"head", "label_form", "space", "decision", "split_suffix", "split_meta", "empty_labels_ok"}


def modules(root: Path) -> dict[str, ast.Module]:
    """Dotted name under src (e.g. `core.config`, `train`) -> parsed module, every package recursed."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts:
            out[".".join(parts)] = ast.parse(p.read_text())
    return out


@functools.cache
def src_modules() -> dict[str, ast.Module]:
    """modules(SRC), parsed once for the tests that read each module (src does not change during a run)."""
    return modules(SRC)


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The src modules a module imports, anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "src":
                names = [a.name for a in node.names]
            elif node.module.startswith("src."):
                base = node.module[4:]
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name[4:] for a in node.names if a.name.startswith("src.")]
        found.update(n for n in names if n in known)
    return found


def owner(module: str) -> str:
    """The package a module belongs to, or the command it is."""
    return module.split(".")[0]


def graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(tree, set(mods)) for name, tree in mods.items()}


def violations(root: Path) -> list[str]:
    """Every import that breaks the layering, as 'importer -> imported: why'."""
    out = []
    for name, deps in graph(root).items():
        here = owner(name)
        for dep in sorted(deps):
            there = owner(dep)
            if there in COMMANDS and dep != name:
                out.append(f"{name} -> {dep}: commands are on top; nothing imports a command")
            elif here in COMMANDS or there == here:
                continue
            elif here not in LAYERS or there not in LAYERS:
                out.append(f"{name} -> {dep}: every package must have its place in LAYERS")
            elif LAYERS.index(there) > LAYERS.index(here):
                out.append(f"{name} -> {dep}: {here} is below {there} and must not import it")
    return out


def cycles(root: Path) -> list[str]:
    g = graph(root)
    state: dict[str, int] = {}
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                found.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in sorted(g):
        if name not in state:
            visit(name, [name])
    return found


def test_src_holds_the_commands_and_the_packages():
    files = {p.stem for p in SRC.glob("*.py")} - {"__init__"}
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == COMMANDS
    assert folders == set(LAYERS)
    assert all((SRC / pkg / "__init__.py").is_file() for pkg in LAYERS)


def test_the_modules_are_found_in_every_package():
    mods = src_modules()
    assert {"train", "ensemble", "core.config", "data.tables", "training.trainer", "runs.members"} <= set(mods)
    assert all(any(m.startswith(pkg + ".") for m in mods) for pkg in LAYERS)


def test_packages_import_only_packages_below_them():
    assert violations(SRC) == []


def test_no_import_cycles():
    assert cycles(SRC) == []


def test_every_package_is_used_by_something_above_it():
    used = {owner(d) for name, deps in graph(SRC).items() for d in deps if owner(d) != owner(name)}
    assert set(LAYERS) - used == set()


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in {Path(rel).parts[0] for rel in files if "/" in rel}:
        (root / pkg / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files, expected", [
    ({"core/config.py": "from src.training.trainer import train_fold\n", "training/trainer.py": ""},
     "core.config -> training.trainer: core is below training"),
    ({"data/tables.py": "def f():\n    from src.runs import layout\n", "runs/layout.py": ""},
     "data.tables -> runs.layout: data is below runs"),
    ({"runs/members.py": "from src import train\n", "train.py": ""},
     "runs.members -> train: commands are on top"),
    ({"train.py": "import src.ensemble\n", "ensemble.py": ""}, "train -> ensemble: commands are on top"),
    ({"extra/x.py": "from src.core.config import load_config\n", "core/config.py": ""},
     "extra.x -> core.config: every package must have its place"),
])
def test_the_rules_catch_a_wrong_import(tmp_path, files, expected):
    found = violations(_tree(tmp_path, files))
    assert any(v.startswith(expected) for v in found), found


def test_the_rules_pass_a_right_import_and_catch_a_cycle(tmp_path):
    ok = _tree(tmp_path / "ok", {"training/trainer.py": "from src.core.config import load_config\n",
                                 "core/config.py": "", "train.py": "from src.training import trainer\n"})
    assert violations(ok) == [] and cycles(ok) == []
    loop = _tree(tmp_path / "loop", {"core/a.py": "from src.core.b import x\n", "core/b.py": "from src.core import a\n"})
    assert cycles(loop) == ["core.a -> core.b -> core.a"]


@pytest.mark.parametrize("name", sorted(src_modules()))
def test_functions_are_short(name):
    tree = src_modules()[name]
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_tests_import_no_private_names():
    """Tests use what the packages offer; a private name is free to change without a test noticing."""
    private = []
    for p in sorted((SRC.parent / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("src"):
                private += [f"{p.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_no_two_modules_share_a_name_across_packages():
    """A module's name says what it holds; the same name in two packages (say figures in core and in
    analysis) makes a newcomer open both. A command and the part it conducts may share one."""
    parts = [m for m in src_modules() if "." in m]  # a subpackage (core.tasks) and its modules each have a name
    names = [m.split(".")[-1] for m in parts]
    assert sorted({n for n in names if names.count(n) > 1}) == []
