"""Every command the README and docs/*.md show in a ```bash block, run as written on a tiny demo
project (the digits demo built by the doc's own `python -m src.demo`, a copy of configs/, and TINY
overrides appended: one short epoch of timm's test_resnet). A command that cannot run here is on
CANNOT_RUN with its reason; a command that is neither run nor listed fails the check, and so does a
listed command no doc shows any more. The README's "Use your own competition" commands are run by
test_readme_recipe.py, which reads them from the same place.

The commands run in-process through their main() (torch is imported once), in the order of the
stages (STAGE), so one trained experiment serves the ensemble, score, report, probe, ... commands."""

from __future__ import annotations

import re
import shlex
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO
from test_readme_recipe import _recipe

from src.core.cli import run_cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Shown in the docs, not run here; each with the reason.
CANNOT_RUN = {
    "make demo": "builds .venv and trains the full demo (2 min); its steps are the commands run here one by one",
    "make test": "the whole suite, of which this test is a part (CI's .ci/run calls it)",
    "kaggle datasets create -p kaggle_kernel/build/dataset --dir-mode zip": "a real upload to Kaggle (token, network)",
    "kaggle kernels push -p kaggle_kernel/build/notebook": "a real upload to Kaggle (token, network)",
    "python -m src.kaggle_kernel pull you/demo-train-fold0 --config configs/demo.yaml":
        "downloads a Kaggle notebook's output (token, network); tests/kaggle pull offline with --pulled",
    "torchrun --standalone --nproc_per_node 4 -m src.train --config configs/<name>.yaml --fold all":
        "4 GPUs with nccl; tests/core/test_distributed.py runs torchrun with 2 CPU processes (gloo)",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint 10.0.0.1:29400 --rdzv_id cv1 "
    "-m src.train --config configs/<name>.yaml --fold all": "two machines with 8 GPUs each",
    "python -m src.tune --config configs/<name>.yaml --n-trials 40 --storage postgresql://tuner@db-host/optuna":
        "a PostgreSQL server; tests/tuning/test_tune_postgres.py runs a shared study on a throwaway one",
    "python -m src.bench --stages --config configs/resnext101.yaml --photos 2000 --batches 8 --folds 2 "
    "--views identity hflip --test-images 128 loader.batch_size=16":
        "ResNeXt101 at 224 px on 2,000 photos: most of an hour on 2 CPU cores (the measurement it records)",
}

# One short epoch of timm's tiny ResNet at 32 px on CPU, 2 folds, appended to every command that reads a config.
TINY = ["model.name=test_resnet", "model.pretrained=false", "model.freeze_before=null", "aug.img_size=32",
        "train.epochs=1", "train.limit_batches=2", "loader.batch_size=32", "loader.num_workers=0",
        "data.n_folds=5", "wandb.mode=disabled", "runtime.device=cpu", "optim.find_steps=10"]
# Flags that make a command cheaper without changing what it does: (flag, tiny value).
SHRINK = {"--n-trials": "1"}
# Flags added to a command: fewer figures and steps; a threshold an (untrained) one-epoch model reaches.
EXTRA = {"src.report": ["--cams", "1", "--wrong", "2"], "src.bench": ["--steps", "2"], "src.pseudo": ["--threshold", "0.1"]}
# The order a project goes through the commands; within a stage, the order the docs show them.
STAGE = ["src.demo", "src.init", "src.folds", "src.train", "src.tune", "src.ensemble", "src.pseudo", "src.score", "src.ledger",
         "src.report", "src.folds --relabel", "src.probe", "src.bench"]


def _blocks(text: str) -> list[str]:
    return re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, re.S | re.M)


def _commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and extra spaces dropped."""
    joined = re.sub(r"\\\n", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def doc_commands() -> dict[str, list[str]]:
    """command -> the docs that show it, in the order they show it."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for block in _blocks(doc.read_text()):
            for command in _commands(block):
                found.setdefault(command, []).append(doc.relative_to(REPO).as_posix())
    return found


def recipe_commands() -> set[str]:
    return {" ".join(c) for c in _recipe()[1]}


def _verb(command: str) -> str | None:
    m = re.match(r"python -m (src\.\w+)(?:\s|$)", command)
    return m.group(1) if m else None


def _split() -> tuple[list[str], list[str]]:
    """(commands run here in STAGE order, then the kaggle_kernel commands on what they trained)."""
    run, kaggle = [], []
    for command in doc_commands():
        if command in CANNOT_RUN or command in recipe_commands() or _verb(command) is None:
            continue
        (kaggle if _verb(command) == "src.kaggle_kernel" else run).append(command)

    def stage(command: str) -> int:
        key = "src.folds --relabel" if _verb(command) == "src.folds" and "--relabel" in command else _verb(command)
        return STAGE.index(key)

    return sorted(run, key=stage), kaggle


def _main(verb: str):
    import importlib

    return importlib.import_module(verb).main


def _argv(command: str) -> list[str]:
    args = shlex.split(command)[3:]
    args = [SHRINK.get(prev, a) if prev in SHRINK else a for prev, a in zip([None, *args], args)]
    verb = _verb(command)
    return [*args, *EXTRA.get(verb, []), *(TINY if "--config" in args else [])]


def _review_one_label(root: Path) -> None:
    """What a user does before --relabel: correct one label in suspect_labels.csv."""
    path = root / "outputs" / "demo" / "suspect_labels.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    classes = sorted(set(df["label"]))
    df.loc[0, "reviewed_label"] = next(c for c in classes if c != df.loc[0, "label"])
    df.to_csv(path, index=False)


def run_command(command: str, root: Path, capsys) -> str:
    if "--relabel" in command:
        _review_one_label(root)
    start = time.perf_counter()
    try:
        run_cli(_main(_verb(command)), _argv(command))
    except SystemExit as e:
        captured = capsys.readouterr()
        pytest.fail(f"`{command}` exited with {e.code}: {captured.err.strip()[-500:]}")
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"{time.perf_counter() - start:6.1f} s  {command}")
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """An empty project: configs/ copied, no inputs/ or outputs/ yet."""
    root = tmp_path_factory.mktemp("docproject")
    shutil.copytree(REPO / "configs", root / "configs")
    return root


def test_every_doc_command_is_run_or_listed():
    shown = doc_commands()
    unknown = [c for c in shown if c not in CANNOT_RUN and c not in recipe_commands() and _verb(c) is None]
    assert not unknown, f"commands the docs show that this test neither runs nor lists in CANNOT_RUN: {unknown}"
    stale = [c for c in CANNOT_RUN if c not in shown]
    assert not stale, f"CANNOT_RUN names commands no doc shows any more: {stale}"
    run, kaggle = _split()
    placeholders = [c for c in run + kaggle if "<" in c]
    assert not placeholders, f"commands with placeholders cannot run as written: {placeholders}"
    assert recipe_commands() <= set(shown)


@pytest.mark.slow
def test_the_doc_commands_run(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    run, kaggle = _split()
    assert kaggle, "the docs show no kaggle_kernel command"
    outputs = {command: run_command(command, project, capsys) for command in run + kaggle}  # kaggle: on the trained demo
    # What the docs say the commands leave.
    assert (project / "inputs" / "digits" / "train.csv").is_file()
    assert (project / "outputs" / "demo" / "cv.json").is_file()
    assert (project / "outputs" / "demo" / "lr_find.png").is_file()
    assert (project / "submissions" / "demo_tta.csv").is_file()
    assert (project / "submissions" / "ledger.csv").is_file()
    assert (project / "outputs" / "demo" / "report.html").is_file()
    assert any((project / "outputs" / "folds" / "relabel").glob("digits_*.csv"))
    score = next(out for c, out in outputs.items() if _verb(c) == "src.score")
    assert "accuracy" in score
    assert (project / "kaggle_kernel" / "build" / "notebook").is_dir()
    assert (project / "kaggle_kernel" / "build" / "train" / "code" / "TRAIN.json").is_file()
