"""What moving code into packages could silently break, checked from outside the checkout: the wheel
that pyproject.toml builds holds every module of src (each subpackage), and installed in a fresh
virtual environment it runs the demo's folds, training, ensemble and Kaggle rehearsal from a folder
that holds only configs/ (the repository's configs are found from the working directory).

The fresh environment gets the installed dependencies through a .pth line naming this
interpreter's site-packages (installing torch again would take minutes and gigabytes); the project
itself comes from the wheel alone, and every command checks that it runs the wheel's code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, TINY

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[1:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build-src")  # a clean copy: no build/ or egg-info left in the checkout
    for name in ("pyproject.toml", "README.md", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, build / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."],
         build, dict(os.environ))
    return next(out.glob("*.whl"))


def test_the_wheel_holds_every_module_of_every_subpackage(wheel):
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("src/")}
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "src").rglob("*.py")} | {"src/kaggle/kaggle_image.txt"}
    assert shipped == source  # the modules, and the Kaggle image's package list (package data)
    assert {"src/core/config.py", "src/ensembling/pipeline.py", "src/kaggle/bundle.py"} <= shipped


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                     dict(os.environ)).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this environment's dependencies
    with zipfile.ZipFile(wheel) as z:  # a wheel install is an unzip into site-packages
        z.extractall(site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return python, env


def test_an_installed_wheel_runs_the_demo_and_the_kaggle_rehearsal(fresh_env, tmp_path):
    python, env = fresh_env
    work = tmp_path / "competition-repo"  # the user's folder: configs/ and nothing of src
    shutil.copytree(REPO / "configs", work / "configs")
    where = _run([str(python), "-c", "import src; print(src.__file__)"], work, env)
    assert str(python.parent.parent) in where and str(REPO) not in where

    def cli(*args: str) -> str:
        return _run([str(python), "-m", *args], work, env)

    ov = [*TINY, "data.n_folds=2", "wandb.mode=disabled"]
    assert "python -m src.train" in cli("src.train", "--help")
    cli("src.demo")
    cli("src.folds", "--config", "configs/demo.yaml", *ov)
    out = cli("src.train", "--config", "configs/demo.yaml", "--fold", "all", *ov)
    assert "fold 1" in out and (work / "outputs" / "demo" / "fold1" / "done.json").is_file()
    cli("src.ensemble", "--config", "configs/demo.yaml", "--tta", "identity", "hflip", "--out", "submissions/w.csv", *ov)
    assert (work / "submissions" / "w.csv").is_file()
    cli("src.kaggle_kernel", "build", "--config", "configs/demo.yaml", "--experiments", "demo", "--tta", "identity",
        "hflip", "--no-wheels", *ov)
    shipped = {p.relative_to(work / "kaggle_kernel" / "build" / "dataset" / "code" / "src").as_posix()
               for p in (work / "kaggle_kernel" / "build" / "dataset" / "code" / "src").rglob("*.py")}
    assert shipped == {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("*.py")}
    out = cli("src.kaggle_kernel", "rehearse", "--config", "configs/demo.yaml", *ov)
    assert "submission checked" in out
    rehearsed = work / "kaggle_kernel" / "build" / "rehearsal" / "submission.csv"
    assert rehearsed.read_bytes() == (work / "submissions" / "w.csv").read_bytes()
