"""Kaggle notebooks as the training machine (--train): the built code dataset and per-fold
notebooks pass the kaggle CLI's own checks; rehearsed on a fake /kaggle, two folds train and leave
their outputs where Kaggle mounts them; a notebook out of time stops between epochs and its next
version resumes from its own previous output; the blend of those outputs is src.ensemble's."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

import src.kaggle_kernel as kk
from src.core.config import load_config
from src.core.utils import UserError
from src.ensembling import pipeline
from src.runs.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_kaggle_kernel import _kaggle_api, _ReachedTheNetwork  # noqa: E402  (the CLI harness, shared)

SHORT = "train.epochs=2 train.limit_batches=2"
BASE = ("data.n_folds=5", "loader.num_workers=0", "loader.batch_size=16", "data.check_images=false",
        "train.epochs=2", "train.limit_batches=2")


def _argv(demo_dir, out, *extra):
    return ["--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={out / 'outputs'}",
            "wandb.mode=disabled", *BASE, "--train", "--no-wheels", "--out", str(out / "build"), *extra]


@pytest.fixture(scope="module")
def split(tmp_path_factory, demo_dir):
    out = tmp_path_factory.mktemp("train_nb")
    import src.folds as folds_cli

    folds_cli.main(["--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={out / 'outputs'}"])
    return out


def test_built_training_notebooks_pass_the_kaggle_clis_checks(demo_dir, split, tmp_path, monkeypatch, capsys):
    out = tmp_path
    shutil.copytree(split / "outputs", out / "outputs")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    kk.main(_argv(demo_dir, out, "--folds", "0", "1"))
    build = out / "build"
    assert sorted(p.name for p in build.iterdir()) == ["code", "fold0", "fold1"]
    meta = json.loads((build / "fold1" / "kernel-metadata.json").read_text())
    assert meta["id"] == "someone/demo-train-fold1" and meta["kernel_sources"] == [meta["id"]]  # its own output
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["dataset_sources"] == ["someone/demo-code"] and meta["competition_sources"] == ["digits"]
    code = build / "code"
    assert (code / "src" / "train.py").is_file() and (code / "configs" / "base.yaml").is_file()
    assert sorted(p.name for p in (code / "folds").iterdir()) == ["digits_k5_s42.csv", "digits_k5_s42.json"]
    api = _kaggle_api(tmp_path, monkeypatch)
    for push in (lambda: api.dataset_create_new(str(code), dir_mode="zip"),
                 lambda: api.kernels_push(str(build / "fold0"))):
        with pytest.raises(_ReachedTheNetwork):  # a ValueError here is the CLI refusing the metadata
            push()


def test_two_folds_rehearsed_resume_after_running_out_of_time_and_blend_as_locally(demo_dir, split, tmp_path, capsys):
    out, root = tmp_path, tmp_path / "kaggle"
    shutil.copytree(split / "outputs", out / "outputs")
    # A session of 1 s: each notebook stops after its first epoch, leaving last.pt and no done.json.
    kk.main(_argv(demo_dir, out, "--folds", "0", "1", "--timeout", "1"))
    kk.main(_argv(demo_dir, out, "--folds", "0", "1", "--rehearse", "--kaggle-root", str(root),
                  "--rehearse-overrides", SHORT))
    for k in (0, 1):
        fold = root / "input" / f"demo-train-fold{k}" / "outputs" / "demo" / f"fold{k}"
        assert (fold / "last.pt").is_file() and not (fold / "done.json").exists()
        assert load_checkpoint(fold / "last.pt")["epoch"] == 0  # one epoch of two
    # The next versions, with a normal session, find their own previous output and finish the folds.
    kk.main(_argv(demo_dir, out, "--folds", "0", "1"))
    kk.main(_argv(demo_dir, out, "--folds", "0", "1", "--rehearse", "--kaggle-root", str(root),
                  "--rehearse-overrides", SHORT))
    local = out / "pulled"
    for k in (0, 1):
        fold = root / "input" / f"demo-train-fold{k}" / "outputs" / "demo" / f"fold{k}"
        done = json.loads((fold / "done.json").read_text())
        assert done["epochs_run"] == 2 and list(pd.read_csv(fold / "history.csv")["epoch"]) == [0, 1]  # resumed
        assert not (fold / "last.pt").exists()
        assert "train_state" not in load_checkpoint(fold / "best.pt")  # slimmed as the bundle's
        shutil.copytree(fold, local / "demo" / f"fold{k}")
    shutil.copytree(out / "outputs" / "folds", local / "folds")
    # Brought home, the two folds blend like any local experiment's.
    cfg = load_config("configs/demo.yaml", [f"data.dir={demo_dir}", f"experiment.output_dir={local}",
                                                  "wandb.mode=disabled", "ensemble.missing_folds=warn",
                                                  "loader.num_workers=0"])
    sub = pipeline.run(cfg, ["demo"], ["identity"], out=out / "sub" / "s.csv")
    assert len(pd.read_csv(sub)) == 360
    # An inference bundle built from them into a folder that holds training notebooks keeps those.
    (out / "ib" / "train").mkdir(parents=True)
    (out / "ib" / "train" / "kept").write_text("x")
    kk.main(["--config", "configs/demo.yaml", f"data.dir={demo_dir}", f"experiment.output_dir={local}",
             "wandb.mode=disabled", "ensemble.missing_folds=warn", "loader.num_workers=0", "--experiments", "demo",
             "--no-tta", "--no-wheels", "--out", str(out / "ib")])
    assert (out / "ib" / "train" / "kept").is_file() and (out / "ib" / "dataset" / "MANIFEST.json").is_file()


def test_the_hub_or_a_missing_split_is_refused_before_building(demo_dir, tmp_path, split, capsys):
    shutil.copytree(split / "outputs", tmp_path / "outputs")
    with pytest.raises(UserError, match="model.pretrained=true cannot reach the hub there.*--weights-dataset"):
        kk.main(_argv(demo_dir, tmp_path, "model.pretrained=true"))
    with pytest.raises(UserError, match="model.pretrained_path .* --weights-dataset USER/SLUG"):
        kk.main(_argv(demo_dir, tmp_path, "model.pretrained_path=/w/resnet.safetensors"))
    shutil.rmtree(tmp_path / "outputs" / "folds")
    with pytest.raises(UserError, match="run python -m src.folds"):  # no split to give every notebook
        kk.main(_argv(demo_dir, tmp_path))
    assert not (tmp_path / "build").exists()
