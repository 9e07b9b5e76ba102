"""Outputs written before the packages move (checkpoints, OOF files, the folds file, image and
prediction caches) still load and blend: the code of the last commit before the move (from git)
trains and ensembles the demo (in a process of its own), then today's code (in the test's process) re-blends from the cached predictions to the same
bytes, predicts a new view from the old checkpoints, and skips the finished folds."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, TINY

from src.core.cli import run_cli

pytestmark = pytest.mark.slow
PRE_PACKAGES = "a82b075b529d4b019a8ff3487aa8eedb5e98ebe2"  # main just before src/ was split into packages


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("needs the repository's git history to rebuild the code before the packages move "
                    "(this copy is not a git checkout)")
    if subprocess.run(["git", "cat-file", "-e", PRE_PACKAGES + "^{commit}"], cwd=REPO, capture_output=True).returncode:
        pytest.skip(f"commit {PRE_PACKAGES[:8]} (before the packages move) is not in this clone; fetch the full history")
    root = tmp_path_factory.mktemp("before-packages")
    archive = subprocess.run(["git", "archive", PRE_PACKAGES, "src", "configs"], cwd=REPO, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    assert (root / "src" / "trainer.py").is_file() and not (root / "src" / "training").exists()
    return root


def _cli(code_root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=code_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _today(capsys, verb: str, *args: str) -> str:
    """Today's code, in this process (torch is already imported): what the command printed."""
    capsys.readouterr()
    run_cli(importlib.import_module(verb).main, list(args))
    out = capsys.readouterr()
    return out.out + out.err


def test_outputs_of_the_code_before_the_move_load_and_blend(old_code, demo_dir, tmp_path, monkeypatch, capsys):
    ov = [*TINY, "data.n_folds=2", f"data.dir={demo_dir}", f"experiment.output_dir={tmp_path / 'outputs'}",
          "wandb.mode=disabled"]
    demo, old_demo = str(REPO / "configs" / "demo.yaml"), str(old_code / "configs" / "demo.yaml")  # each code its configs
    blend = ["--tta", "identity", "hflip"]
    _cli(old_code, "src.train", "--config", old_demo, "--fold", "all", *ov)
    _cli(old_code, "src.ensemble", "--config", old_demo, *blend, "--out", str(tmp_path / "old.csv"), *ov)

    monkeypatch.chdir(REPO)  # today's code runs from the checkout
    again = _today(capsys, "src.ensemble", "--config", demo, *blend, "--out", str(tmp_path / "new.csv"), *ov)
    # the old cache keyed images on path, size and time: today's keys them on their bytes, so the
    # old entries are never trusted and every prediction is made again, once
    assert "8 computed, 0 read" in again, again  # (reading back what it wrote: tests/runs/test_preds_cache.py)
    assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()
    new_view = _today(capsys, "src.ensemble", "--config", demo, "--tta", "vflip", "--out", str(tmp_path / "v.csv"), *ov)
    assert "computed" in new_view and (tmp_path / "v.csv").is_file()  # the old checkpoints loaded and predicted
    trained = _today(capsys, "src.train", "--config", demo, "--fold", "all", *ov)
    assert "fold 0: finished earlier" in trained and "fold 1: finished earlier" in trained, trained[-1500:]
