"""Run folders: a fold is finished only by its done.json, an interrupted --force never looks
finished, a fold trains in one process at a time, and the config keys that moved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.cli import run_cli
from src.core.config import config_from_dict, load_config
from src.core.utils import UserError
from src.ensembling.pipeline import run as ensemble_run
from src.runs.layout import finished_folds, fold_lock, fold_paths
from src.runs.members import open_member
from src.train import main as train_main
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after an epoch, raised from the per-epoch callback."""


def _interrupt(epoch: int, value: float) -> None:
    raise Interrupted


@pytest.fixture
def two_folds(demo_dir, tiny_cfg, tmp_path):
    cfg = tiny_cfg(demo_dir, tmp_path, "data.n_folds=2", "train.epochs=2")
    for k in (0, 1):
        train_fold(cfg, k)
    return cfg


def test_an_interrupted_force_leaves_the_fold_unfinished_and_the_ensemble_refuses_it(two_folds, tmp_path):
    cfg = two_folds
    fp = fold_paths(cfg.out_dir, 0)
    assert fp.done.is_file() and finished_folds(cfg.out_dir) == [0, 1]
    with pytest.raises(Interrupted):
        train_fold(cfg, 0, force=True, on_epoch=_interrupt)  # stopped after the first of two epochs
    assert not fp.done.is_file()
    assert fp.last.is_file()  # the new run's epoch 0, resumable
    assert finished_folds(cfg.out_dir) == [1]
    with pytest.raises(UserError, match=r"no finished run for folds \[0\].*ensemble.missing_folds=warn"):
        open_member(cfg.experiment.name, cfg.experiment.output_dir, "error", cfg.data.dir)
    out = tmp_path / "sub.csv"
    with pytest.raises(UserError, match="no finished run for folds"):
        ensemble_run(cfg, tta=["identity"], out=out)
    assert not out.exists()
    # --resume finishes it; then the ensemble takes both folds.
    result = train_fold(cfg, 0, resume=True)
    assert result["epochs_run"] == 2 and fp.done.is_file()
    assert open_member(cfg.experiment.name, cfg.experiment.output_dir, "error", cfg.data.dir).folds == [0, 1]


def test_force_starts_over_without_the_old_checkpoints(two_folds):
    cfg = two_folds
    fp = fold_paths(cfg.out_dir, 1)
    old = fp.best.stat().st_mtime_ns
    with pytest.raises(Interrupted):
        train_fold(cfg, 1, force=True, on_epoch=_interrupt)
    assert not fp.done.is_file()
    assert fp.best.stat().st_mtime_ns != old  # best.pt is the new run's, not the finished old one


def test_a_second_run_on_the_same_fold_is_refused_naming_the_process(demo_dir, overrides_for, tmp_path):
    overrides = overrides_for(demo_dir, tmp_path, "model.name=test_resnet", "train.epochs=1", "train.limit_batches=1",
                              "loader.num_workers=0", "data.check_images=false")
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    fp = fold_paths(cfg.out_dir, 0)
    with fold_lock(fp, "fold 0 of demo"):  # this test process is "the first run"
        proc = subprocess.run([sys.executable, "-m", "src.train", "--config", str(REPO / "configs" / "demo.yaml"),
                               "--fold", "0", *overrides], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"being trained right now by process {os.getpid()}" in lines[0]
        assert sorted(p.name for p in fp.dir.iterdir()) == [".lock"]  # the second run wrote nothing
    # The lock goes with its holder: now the same command trains (here, in this process).
    run_cli(train_main, ["--config", str(REPO / "configs" / "demo.yaml"), "--fold", "0", *overrides])
    assert fp.done.is_file()


def test_finished_folds_reads_done_files_only(tmp_path):
    for name in ("fold0", "fold2", "fold-1", "foldx"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "done.json").write_text("{}")
    (tmp_path / "fold1").mkdir()
    (tmp_path / "fold1" / "best.pt").write_bytes(b"")  # a checkpoint alone is not a finished fold
    assert finished_folds(tmp_path) == [0, 2]


@pytest.mark.parametrize("old,new", [("train.device", "runtime.device"), ("train.amp", "runtime.amp"),
                                     ("train.channels_last", "runtime.channels_last"),
                                     ("train.deterministic", "runtime.deterministic")])
def test_a_moved_key_names_its_new_name(old, new):
    with pytest.raises(UserError, match=rf"'{old}' \(in the command line\) is now '{new}'; rename the key"):
        load_config(REPO / "configs" / "demo.yaml", [f"{old}=cpu" if old.endswith("device") else f"{old}=false"])


def test_a_moved_key_in_a_file_names_the_file(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"base: {REPO / 'configs' / 'base.yaml'}\ntrain:\n  amp: bf16\n")
    with pytest.raises(UserError, match=r"'train.amp' \(in .*exp.yaml\) is now 'runtime.amp'"):
        load_config(exp)


def test_configs_stored_by_older_versions_still_load():
    stored = load_config(REPO / "configs" / "demo.yaml").to_dict()
    runtime = stored.pop("runtime")
    stored["train"].update({"device": "cpu", "amp": "fp16", "channels_last": False, "deterministic": True})
    cfg = config_from_dict(stored, "an old best.pt")
    assert cfg.runtime.model_dump() == {**runtime, "device": "cpu", "amp": "fp16", "channels_last": False,
                                        "deterministic": True}


def test_the_recipe_layer_lives_in_the_recipe_config():
    assert load_config(REPO / "configs" / "base.yaml").model.freeze_before is None
    assert load_config(REPO / "configs" / "resnext101.yaml").model.freeze_before == "layer4.0.conv1"


def test_finish_repredicts_an_oof_file_left_apart_from_best_pt(demo_dir, tiny_cfg, tmp_path):
    """Stopped between writing oof.csv and best.pt, then resumed without improving again: at the
    end oof.csv is predicted again by best.pt instead of describing a model that is gone."""
    cfg = tiny_cfg(demo_dir, tmp_path, "data.n_folds=2", "train.epochs=2")
    train_fold(cfg, 0)
    fp = fold_paths(cfg.out_dir, 0)
    good = pd.read_csv(fp.oof, dtype=str)
    stale = good.copy()
    stale["epoch"] = "7"
    stale[[c for c in stale if c.startswith("prob_")]] = "0.1"
    stale.to_csv(fp.oof, index=False)
    fp.done.unlink()  # interrupted before done.json
    result = train_fold(cfg, 0, resume=True)  # nothing left to train: it only finishes
    fixed = pd.read_csv(fp.oof, dtype=str)
    assert list(fixed["epoch"]) == [str(result["best_epoch"])] * len(fixed)
    cols = [c for c in good if c.startswith("prob_")]
    np.testing.assert_allclose(fixed[cols].astype(float), good[cols].astype(float), rtol=1e-5, atol=1e-7)


def test_folds_and_checkpoints_of_the_previous_version_still_resume_and_extend(demo_dir, tiny_cfg, tmp_path):
    """Runs whose stored configs still hold train.device/amp/... (before the runtime section) are
    compared after migration: no false 'settings differ'."""
    cfg = tiny_cfg(demo_dir, tmp_path, "data.n_folds=2", "train.epochs=2")
    train_fold(cfg, 0)
    fp = fold_paths(cfg.out_dir, 0)
    done = json.loads(fp.done.read_text())
    old = done["config"]
    old["train"].update(old.pop("runtime"))
    old["data"].pop("na_labels")
    fp.done.write_text(json.dumps(done))
    train_fold(cfg, 1)  # not refused as "settings differ from fold 0"
    ckpt = torch.load(fp.last, weights_only=True)
    ckpt["config"] = old
    torch.save(ckpt, fp.last)
    fp.done.unlink()
    assert train_fold(cfg, 0, resume=True)["epochs_run"] == 2  # resumes, not "the config differs"
