"""src.probe on a regression competition (issue 29): a ridge on the frozen backbone's cached features,
fitted per fold of the experiment's split, its OOF rmse/mae/r2 recomputed here with scikit-learn on the
same features, better than the training mean, and a value submission; classifiers are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import src.train as train
from src.analysis.probe import RIDGE_ALPHAS, run_probe
from src.core.config import CONFIG_DIR
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.demo import build_regression_demo

CONFIG = CONFIG_DIR / "demo_regression.yaml"
TINY = ("model.name=test_resnet", "aug.img_size=32", "loader.batch_size=32", "loader.num_workers=0",
        "data.check_images=false", "data.n_folds=3", "train.epochs=1", "train.limit_batches=2")


@pytest.fixture(scope="module")
def probed(tmp_path_factory, demo_cfg):
    root = tmp_path_factory.mktemp("regr_probe")
    comp = build_regression_demo(root / "comp", n_train=400, n_test=16)
    cfg = demo_cfg(comp, root / "out", *TINY, config=CONFIG)
    train.run(cfg, "all")
    return cfg, run_probe(cfg, out=root / "sub" / "probe.csv")


def test_the_oof_scores_are_a_ridge_fitted_per_fold_on_the_same_features(probed):
    cfg, res = probed
    x = np.load(next((cfg.out_dir / "probe").glob("features-train-*.npy")))
    split, _, _ = load_or_create_folds(cfg, create=False)
    assert res.oof["id"].tolist() == split["id"].tolist()
    y, folds = split["label"].astype(float).to_numpy(), split["fold"].to_numpy()
    pred = np.zeros(len(y))
    for k in sorted(set(folds)):
        ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(x[folds != k], y[folds != k])
        pred[folds == k] = np.clip(ridge.predict(x[folds == k]), 1, 100)
    assert np.allclose(res.oof["prob_Pawpularity"], pred)
    oof = res.scores["oof"]
    assert list(oof)[0] == "rmse" and {"rmse", "mae", "r2"} <= set(oof)
    assert oof["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)))
    assert oof["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert oof["r2"] == pytest.approx(r2_score(y, pred))
    # better than predicting each fold's training mean
    mean_rmse = np.sqrt(np.mean([(y[i] - y[folds != folds[i]].mean()) ** 2 for i in range(len(y))]))
    assert oof["rmse"] < mean_rmse
    written = json.loads((cfg.out_dir / "probe" / "ridge.json").read_text())
    assert written["classifier"] == "ridge" and written["oof"]["rmse"] == pytest.approx(oof["rmse"])


def test_the_score_stands_beside_the_finetuned_rmse(probed):
    cfg, res = probed
    assert res.finetuned == json.loads((cfg.out_dir / "cv.json").read_text())["oof"]["rmse"]


def test_the_submission_holds_values_in_the_target_range(probed):
    cfg, res = probed
    sub = pd.read_csv(res.submission)
    sample = pd.read_csv(Path(cfg.data.dir) / "sample_submission.csv")
    assert list(sub.columns) == ["Id", "Pawpularity"] and sub["Id"].tolist() == sample["Id"].tolist()
    assert sub["Pawpularity"].between(1, 100).all() and sub["Pawpularity"].nunique() > 1


def test_a_classifier_is_refused_on_values_and_ridge_on_classes(probed, demo_dir, tiny_cfg, tmp_path):
    cfg, _ = probed
    with pytest.raises(UserError, match="--classifier logreg is a classifier.*regression targets.*--classifier ridge"):
        run_probe(cfg, "logreg")
    with pytest.raises(UserError, match="--classifier ridge is a linear regression.*multiclass targets"):
        run_probe(tiny_cfg(demo_dir, tmp_path / "out"), "ridge")
    assert not (tmp_path / "out").exists()
