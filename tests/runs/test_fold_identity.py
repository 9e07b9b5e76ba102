"""A fold folder holds its own fold's run (issue 31.3), for every task kind: fold 1's run filed as
fold0/ (moved, or with its done.json and OOF fold column edited to say 0) is refused by the ensemble
and by the pull before anything is written, an OOF id predicted twice is refused where a member's OOF
rows are read, untouched folds still open; and `pull` offline says one sentence, before torch loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TASKS, TINY

import src.kaggle_kernel as kk
from src.core.utils import UserError
from src.ensembling import pipeline
from src.runs.members import open_member
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(task_competition, demo_cfg, tmp_path_factory):
    """trained(task) -> (outputs folder with both folds of a 2-fold `demo` trained, its overrides, config)."""
    built = {}

    def make(task: str):
        if task not in built:
            comp, config, extra = task_competition(task)
            out = tmp_path_factory.mktemp(f"identity_{task}") / "outputs"
            overrides = [f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled", *TINY,
                         "data.n_folds=2", "train.limit_batches=1", "experiment.name=demo", *extra]
            cfg = demo_cfg(comp, out, *overrides[3:], config=config)
            for k in (0, 1):
                train_fold(cfg, k)
            built[task] = (out, overrides, config)
        return built[task]

    return make


def _copy(trained, task: str, tmp_path: Path):
    """A copy of the task's trained outputs under tmp_path, its config loaded there."""
    from src.core.config import load_config

    out, overrides, config = trained(task)
    shutil.copytree(out, tmp_path / "outputs")
    overrides = [o if not o.startswith("experiment.output_dir=") else f"experiment.output_dir={tmp_path / 'outputs'}"
                 for o in overrides]
    return tmp_path / "outputs", overrides, config, load_config(config, overrides)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _say_fold0(fold: Path, oof_too: bool) -> None:
    done = json.loads((fold / "done.json").read_text())
    (fold / "done.json").write_text(json.dumps({**done, "fold": 0}))
    if oof_too:
        pd.read_csv(fold / "oof.csv", dtype=str, keep_default_na=False).assign(fold="0").to_csv(fold / "oof.csv",
                                                                                               index=False)


# damage to outputs/demo/: fold 1's run as fold0/, and the part of the message that says what it holds
MISFILINGS = {
    "moved": (lambda f: None, r"holds fold 1's run \(its done\.json says fold 1\)"),
    "done.json edited": (lambda f: _say_fold0(f, oof_too=False), r"holds OOF rows of fold 1 \(oof\.csv's fold column\)"),
    "done.json and OOF edited": (lambda f: _say_fold0(f, oof_too=True),
                                 r"holds OOF predictions of images the split puts elsewhere \(\d+ in fold 1\)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_a_fold_filed_under_another_folds_name_is_refused_before_anything_is_written(trained, task, tmp_path):
    out, _, _, cfg = _copy(trained, task, tmp_path)
    exp = out / "demo"
    assert open_member("demo", str(out), "error").folds == [0, 1]  # its own folds: no false refusal
    for case, (edit, holds) in MISFILINGS.items():
        shutil.rmtree(exp / "fold0", ignore_errors=True)
        shutil.copytree(exp / "fold1", exp / "fold0")
        edit(exp / "fold0")
        before = _files(tmp_path)
        with pytest.raises(UserError, match=r"outputs/demo/fold0 holds .*not fold 0's; .*--fold 0") as e:
            pipeline.run(cfg, ["demo"], ["identity"], out=tmp_path / "sub" / "s.csv")
        assert re.search(holds, str(e.value)), (case, str(e.value))  # what the folder holds instead
        assert _files(tmp_path) == before, case
    shutil.rmtree(exp / "fold0")  # fold 1 moved to fold0/, with missing folds allowed: still refused
    shutil.move(exp / "fold1", exp / "fold0")
    with pytest.raises(UserError, match="fold0 holds fold 1's run.*move the folder to fold1/"):
        open_member("demo", str(out), "warn")


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_an_oof_id_predicted_twice_is_refused_naming_the_file(trained, task, tmp_path):
    out, _, _, cfg = _copy(trained, task, tmp_path)
    oof = out / "demo" / "fold1" / "oof.csv"
    lines = oof.read_text().splitlines()
    oof.write_text("\n".join(lines + lines[1:3]) + "\n")
    with pytest.raises(UserError, match=rf"experiment demo's OOF predictions repeat 2 ids .* in {oof}; each image"):
        pipeline.run(cfg, ["demo"], ["identity"], out=tmp_path / "sub" / "s.csv")
    assert not (tmp_path / "sub").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_pull_refuses_to_install_a_run_under_another_folds_folder(trained, task, tmp_path):
    out, overrides, config, _ = _copy(trained, task, tmp_path)
    pulled = tmp_path / "pulled" / "outputs"
    shutil.copytree(out / "folds", pulled / "folds")
    shutil.copytree(out / "demo" / "fold1", pulled / "demo" / "fold0")
    shutil.rmtree(out / "demo" / "fold0")
    before = _files(tmp_path)
    with pytest.raises(UserError, match="fold0/ in the output of you/demo-train-fold0 holds fold 1's run .*, not fold "
                                        "0's; nothing was installed"):
        kk.main(["pull", "you/demo-train-fold0", "--config", str(config), *overrides, "--pulled", str(pulled.parent)])
    assert _files(tmp_path) == before and not (out / "demo" / "fold0").exists()


@pytest.mark.slow
@pytest.mark.parametrize("credentials", ["none", "dummy token, no network"])
def test_pull_offline_is_one_sentence_before_torch_loads(demo_dir, tmp_path, credentials):
    """The real kaggle package, in a process of its own: without credentials it prints its login
    help (twice, before the fix); with dummy ones it cannot reach Kaggle. Either way: stdout empty,
    one stderr line naming --pulled DIR, and torch never imported (it took 15-34 s before)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update({"KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle"), "PYTHONPATH": str(REPO)})
    if credentials != "none":  # the package's own switch to http://localhost: no network, whatever this machine has
        env.update({"KAGGLE_USERNAME": "dummy", "KAGGLE_KEY": "0" * 32, "KAGGLE_API_ENVIRONMENT": "LOCALHOST"})
    marker = tmp_path / "torch_loaded"
    code = (f"import atexit, runpy, sys; atexit.register(lambda: 'torch' in sys.modules and open({str(marker)!r}, 'w')); "
            "sys.argv = ['src.kaggle_kernel', *sys.argv[1:]]; runpy.run_module('src.kaggle_kernel', run_name='__main__')")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "pull", "you/demo-train-fold0", "--config", "configs/demo.yaml",
                           f"data.dir={demo_dir}", f"experiment.output_dir={tmp_path / 'outputs'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    print(f"pull offline ({credentials}): {seconds:.1f} s")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: cannot download the output of you/demo-train-fold0 (")
    assert "run `kaggle kernels output you/demo-train-fold0 -p DIR`" in proc.stderr and "--pulled DIR" in proc.stderr
    assert ("no Kaggle credentials here" if credentials == "none" else "cannot be reached from here") in proc.stderr
    assert not marker.exists(), "torch was imported before the download failed"
    assert not (tmp_path / "outputs" / "demo").exists()
