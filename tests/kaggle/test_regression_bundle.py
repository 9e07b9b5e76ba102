"""The offline Kaggle bundle of a regression experiment (issue 29): two tiny folds of the PetFinder-style
demo (bce on the scaled value), built with TTA and rehearsed headless on a fake /kaggle; the notebook's
submission.csv holds src.ensemble's local values (within 1e-6), ids in the sample's order, inside
data.target_range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src import kaggle_kernel
from src.core.cli import run_cli
from src.demo import build_regression_demo
from src.ensembling import pipeline
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo_regression.yaml"
TINY = ("model.name=test_resnet", "train.epochs=1", "train.limit_batches=3", "loader.batch_size=16",
        "loader.num_workers=0", "data.check_images=false", "data.n_folds=2", "wandb.mode=disabled")


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory, demo_cfg):
    root = tmp_path_factory.mktemp("regr_bundle")
    comp = build_regression_demo(root / "petfinder", n_train=48, n_test=10)
    cfg = demo_cfg(comp, root / "outputs", *TINY, "experiment.name=tiny", config=CONFIG)
    for k in (0, 1):
        train_fold(cfg, k)
    common = ["--config", str(CONFIG), "--out", str(root / "build"), f"data.dir={comp}",
              f"experiment.output_dir={root / 'outputs'}", *TINY]
    run_cli(kaggle_kernel.main, ["build", *common, "--experiments", "tiny", "--tta", "identity", "vflip",
                                 "--no-wheels", "--dataset", "someone/regr-bundle", "--kernel", "someone/regr-inference"])
    run_cli(kaggle_kernel.main, ["rehearse", *common])
    return root, cfg, comp


def test_the_rehearsed_values_are_the_local_ensembles(rehearsed):
    root, cfg, comp = rehearsed
    manifest = json.loads((root / "build" / "dataset" / "MANIFEST.json").read_text())
    assert manifest["views"] == ["identity", "vflip"] and manifest["format"] in ("auto", "value")
    local = pipeline.run(cfg, ["tiny"], manifest["views"], manifest["weights"], manifest["voting"], root / "local.csv",
                         manifest["format"])
    kernel = pd.read_csv(root / "build" / "rehearsal" / "submission.csv")
    here = pd.read_csv(local)
    sample = pd.read_csv(comp / "sample_submission.csv")
    assert list(kernel.columns) == ["Id", "Pawpularity"]
    assert kernel["Id"].tolist() == here["Id"].tolist() == sample["Id"].tolist()
    assert np.allclose(kernel["Pawpularity"], here["Pawpularity"], rtol=0, atol=1e-6)
    assert kernel["Pawpularity"].between(1, 100).all() and kernel["Pawpularity"].nunique() > 1
