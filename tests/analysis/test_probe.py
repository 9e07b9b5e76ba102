"""The frozen-feature baseline on the digits demo: features computed once and cached, every
training image predicted once by a classifier that did not see it, the score beside the
fine-tuned run's cv.json, and a checked submission."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO_CONFIG, TINY

import src.probe as probe_cmd
import src.train as train
from src.analysis.features import frozen_backbone
from src.analysis.probe import CLASSIFIERS, run_probe
from src.core.runtime import Runtime
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.data.loaders import ImageDataset
from src.data.transforms import build_transform, resolve_norm

FOLDS = ("data.n_folds=2",)


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory, tiny_cfg):
    """A 2-fold tiny run with its cv.json, and a logistic-regression probe with a submission."""
    out = tmp_path_factory.mktemp("probe")
    cfg = tiny_cfg(demo_dir, out, *FOLDS)
    train.run(cfg, "all")
    return cfg, run_probe(cfg, "logreg", out / "probe.csv")


def test_every_training_id_once_out_of_fold(trained):
    cfg, res = trained
    ids = pd.read_csv(Path(cfg.data.dir) / "train.csv", dtype=str)["id"]
    assert sorted(res.oof["id"]) == sorted(ids) and not res.oof["id"].duplicated().any()
    split, classes, _ = load_or_create_folds(cfg, create=False)
    assert dict(zip(res.oof["id"], res.oof["fold"])) == dict(zip(split["id"], split["fold"]))
    probs = res.oof[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(probs.sum(1), 1) and np.isfinite(probs).all()
    written = pd.read_csv(cfg.out_dir / "probe" / "logreg_oof.csv", dtype={"id": str, "label": str})
    assert written["id"].tolist() == res.oof["id"].tolist()
    assert np.allclose(written[[f"prob_{c}" for c in classes]].to_numpy(), probs)


def test_fold_rows_come_from_a_classifier_fitted_without_them(trained):
    cfg, res = trained
    feats = np.load(next((cfg.out_dir / "probe").glob("features-train-*.npy")))
    y, folds = res.oof["target"].to_numpy(), res.oof["fold"].to_numpy()
    classes = [c.removeprefix("prob_") for c in res.oof.columns if c.startswith("prob_")]
    for k in (0, 1):
        clf = CLASSIFIERS["logreg"](cfg.experiment.seed).fit(feats[folds != k], y[folds != k])
        assert np.allclose(clf.predict_proba(feats[folds == k]), res.oof.loc[folds == k, [f"prob_{c}" for c in classes]])


def test_cached_features_are_the_backbones_on_those_images(trained, capsys):
    cfg, res = trained
    feats = np.load(next((cfg.out_dir / "probe").glob("features-train-*.npy")))
    split, classes, _ = load_or_create_folds(cfg, create=False)
    rt = Runtime.from_cfg(cfg.runtime)
    model = frozen_backbone(cfg, len(classes), rt)
    mean, std = resolve_norm(cfg.aug, model.pretrained_cfg)
    ds = ImageDataset(split["path"], None, build_transform(cfg.aug, False, mean, std))
    for i in (0, 700, len(split) - 1):
        with torch.no_grad():
            f = model(ds[i][0][None]).numpy()[0]
        assert np.allclose(f, feats[i], atol=1e-5), i
    again = run_probe(cfg, "logreg")
    assert "train features (1437, 96): read from the cache" in capsys.readouterr().out
    assert np.allclose(again.oof.filter(like="prob_").to_numpy(), res.oof.filter(like="prob_").to_numpy())


def test_score_beside_the_finetuned_one(trained):
    cfg, res = trained
    cv = json.loads((cfg.out_dir / "cv.json").read_text())
    assert res.finetuned == cv["oof"]["accuracy"]
    acc = (res.oof.filter(like="prob_").to_numpy().argmax(1) == res.oof["target"]).mean()
    assert res.scores["oof"]["accuracy"] == pytest.approx(acc)
    assert json.loads((cfg.out_dir / "probe" / "logreg.json").read_text())["oof"]["accuracy"] == pytest.approx(acc)


def test_submission_in_the_sample_format(trained):
    cfg, res = trained
    sample = pd.read_csv(Path(cfg.data.dir) / "sample_submission.csv", dtype=str)
    sub = pd.read_csv(res.submission, dtype=str)
    probs = pd.read_csv(res.submission.with_name("probe_probs.csv"), dtype={"id": str})
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()
    classes = list(probs.columns[1:])
    assert sub["label"].tolist() == [classes[i] for i in probs[classes].to_numpy().argmax(1)]


@pytest.mark.parametrize("name", ["rf", "svm"])
def test_other_classifiers_cover_every_id(trained, name):
    cfg, _ = trained
    res = run_probe(cfg, name)
    assert len(res.oof) == 1437 and res.oof["id"].is_unique
    assert np.allclose(res.oof.filter(like="prob_").sum(axis=1), 1)


def test_mistakes_are_one_sentence(trained, tmp_path):
    cfg, _ = trained
    args = ["--config", str(DEMO_CONFIG), f"data.dir={cfg.data.dir}", f"experiment.output_dir={tmp_path}",
            "wandb.mode=disabled", *TINY, *FOLDS]
    with pytest.raises(UserError, match="inside the competition folder"):
        probe_cmd.main(args + ["--out", str(Path(cfg.data.dir) / "sub.csv")])
    with pytest.raises(UserError, match="not one of"):
        run_probe(cfg, "knn")
    assert list(tmp_path.iterdir()) == []
