"""The shape of src/: commands on top, packages below them in a stated order, one owner per concern.

Read from the source with ast, recursing into every package: a command imports packages, never
another command; a package imports only itself and the packages below it in LAYERS; no module
imports a command; there is no import cycle between modules; and no function is longer than about
80 lines. `violations` takes any source root, so the rules are also run against a small tree with
a deliberately wrong import, to see them fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Bottom to top: each package may import the ones before it, never one after it.
LAYERS = ["core", "data", "models", "evaluation", "runs", "training", "ensembling", "analysis", "tuning", "kaggle"]
COMMANDS = {"train", "ensemble", "tune", "folds", "score", "demo", "bench", "kaggle_kernel", "report", "probe",
            "ledger", "pseudo", "average"}
MAX_FUNCTION_LINES = 80
# The task owner: the only module that may decide by the kind of task (core/task.py's classes).
TASK_OWNER = "core.task"
KIND_NAMES = {"multiclass", "binary", "multilabel", "ordinal", "topk"}
# What stages used to branch on (flags of the task, or passed in as arguments), and the roles a task
# names for a stage's table (head, splitter, ...): read by a lookup, never tested by an if.
TASK_FLAGS = {"multilabel", "ordinal", "regression", "decides_by_threshold", "kind", "binary", "topk"}
TASK_ROLES = {"head", "splitter", "label_form", "space", "decision", "split_suffix", "split_meta", "empty_labels_ok"}


def modules(root: Path) -> dict[str, ast.Module]:
    """Dotted name under src (e.g. `core.config`, `train`) -> parsed module, every package recursed."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts:
            out[".".join(parts)] = ast.parse(p.read_text())
    return out


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
    mods = modules(SRC)
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


@pytest.mark.parametrize("name", sorted(modules(SRC)))
def test_functions_are_short(name):
    tree = modules(SRC)[name]
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
    parts = [m for m in modules(SRC) if "." in m and not m.endswith("__init__")]
    names = [m.split(".")[1] for m in parts]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def _mentions_task(node: ast.AST) -> bool:
    """Whether an expression names a task or its kind (task, cfg.data.task, kind, m.task.name ...)."""
    for n in ast.walk(node):
        name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else ""
        if "task" in name.lower() or "kind" in name.lower():
            return True
    return False


def _task_tests(node: ast.AST) -> bool:
    """Whether a branch's test reads a task flag or role (task.multilabel, a `regression` argument, task.space)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr in TASK_FLAGS | TASK_ROLES:
            return True
        if isinstance(n, ast.Name) and n.id in TASK_FLAGS:
            return True
    return False


def task_branches(root: Path) -> list[str]:
    """Every place outside the task owner that decides by the kind of task, as 'module:line: code':
    a comparison of a task or kind with a kind's name, a comparison of a task role, and an if (or a
    conditional expression, a comprehension's if, an and/or) whose test reads a task flag or role."""
    out = []
    for name, tree in modules(root).items():
        if name == TASK_OWNER:
            continue
        for n in ast.walk(tree):
            hit = False
            if isinstance(n, ast.Compare):
                sides = [n.left, *n.comparators]
                kinds = [c for side in sides for c in ast.walk(side)
                         if isinstance(c, ast.Constant) and c.value in KIND_NAMES]
                roles = [a for side in sides for a in ast.walk(side) if isinstance(a, ast.Attribute)
                         and a.attr in TASK_ROLES]
                hit = bool(kinds and any(_mentions_task(side) for side in sides)) or bool(roles)
            elif isinstance(n, (ast.If, ast.IfExp, ast.While)):
                hit = _task_tests(n.test)
            elif isinstance(n, ast.comprehension):
                hit = any(_task_tests(t) for t in n.ifs)
                n = n.ifs[0] if hit else n
            elif isinstance(n, ast.BoolOp):
                hit = any(_task_tests(v) for v in n.values)
            if hit:
                out.append(f"{name}:{n.lineno}: {ast.unparse(n).splitlines()[0][:80]}")
    return sorted(set(out))


def test_no_stage_decides_by_the_kind_of_task():
    """Each kind of task is one class of core/task.py, which every stage asks; a new kind must not
    need a new branch in the stages."""
    assert task_branches(SRC) == []


@pytest.mark.parametrize("code, expected", [
    ("def f(task):\n    if task.multilabel:\n        return 1\n", "ensembling.x:2"),
    ("def f(cfg):\n    return 1 if cfg.data.task == 'ordinal' else 0\n", "ensembling.x:2"),
    ("def f(kind):\n    return kind in ('multilabel', 'ordinal')\n", "ensembling.x:2"),
    ("def f(x, multilabel):\n    return [a for a in x if multilabel]\n", "ensembling.x:2"),
    ("def f(task):\n    return task.decision == 'argmax'\n", "ensembling.x:2"),
    ("def f(task, a):\n    return a and task.ordinal\n", "ensembling.x:2"),
])
def test_the_task_rule_catches_a_branch_in_a_stage(tmp_path, code, expected):
    root = _tree(tmp_path, {"ensembling/x.py": code, "core/task.py": "def g(task):\n    if task.multilabel:\n"
                                                                    "        return 1\n"})
    found = task_branches(root)
    assert [f.split(": ")[0] for f in found] == [expected], found  # the owner's own branch is allowed


def test_the_task_rule_passes_a_lookup_and_a_format_name(tmp_path):
    root = _tree(tmp_path, {"ensembling/x.py": "LOSSES = {'softmax': 1}\n\ndef f(task, fmt):\n"
                                               "    return LOSSES[task.head] if fmt == 'binary' else 0\n"})
    assert task_branches(root) == []
