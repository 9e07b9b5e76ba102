"""src.report on a regression experiment (issue 29): the CV table with rmse/mae/r2 recomputed with
scikit-learn, the predicted-against-label figure and the errors by range of the label, every OOF
image by |error| in worst_images.csv (no column to relabel), and Grad-CAM of the head's one output
by the fold model that never trained on the image, reproducing oof.csv's value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

import src.report as report_cmd
from src.analysis.report import build_report
from src.core.config import CONFIG_DIR
from src.demo import build_regression_demo
from src.runs.layout import fold_paths
from src.training.trainer import train_fold

CONFIG = CONFIG_DIR / "demo_regression.yaml"
TINY = ("model.name=test_resnet", "train.epochs=1", "train.limit_batches=3", "loader.batch_size=16",
        "loader.num_workers=0", "data.check_images=false", "data.n_folds=2", "loss.name=mse")


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_cfg):
    root = tmp_path_factory.mktemp("regr_report")
    comp = build_regression_demo(root / "comp", n_train=48, n_test=6)
    cfg = demo_cfg(comp, root / "out", *TINY, config=CONFIG)
    for k in range(2):
        train_fold(cfg, k)
    oof = pd.concat([pd.read_csv(fold_paths(cfg.out_dir, k).oof, dtype={"id": str}) for k in range(2)])
    return cfg, oof, build_report(cfg, n_wrong=6, n_cam=3)


def test_the_cv_table_scores_values(run):
    cfg, oof, rep = run
    row = rep.cv.set_index("fold").loc["oof"]
    y, pred = oof["label"].astype(float), oof["prob_Pawpularity"]
    assert row["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)))
    assert row["mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert row["r2"] == pytest.approx(r2_score(y, pred))
    assert "accuracy" not in rep.cv and rep.counts is None


def test_worst_images_are_every_oof_image_by_absolute_error(run):
    cfg, oof, rep = run
    assert rep.suspects_csv == cfg.out_dir / "worst_images.csv" and not (cfg.out_dir / "suspect_labels.csv").exists()
    worst = pd.read_csv(rep.suspects_csv, dtype={"id": str})
    assert "reviewed_label" not in worst and len(worst) == len(oof)
    err = (oof.set_index("id")["prob_Pawpularity"] - oof.set_index("id")["label"].astype(float)).abs()
    assert np.allclose(worst["loss"], err.loc[worst["id"]]) and worst["loss"].is_monotonic_decreasing


def test_errors_by_range_and_the_residual_figure(run):
    cfg, oof, rep = run
    table = rep.per_class
    assert table["images"].sum() == len(oof)
    err = (oof["prob_Pawpularity"] - oof["label"].astype(float)).abs()
    assert (table["images"] * table["mae"]).sum() / len(oof) == pytest.approx(err.mean())
    assert rep.figures["confusion"].name == "residuals.png" and rep.figures["confusion"].stat().st_size > 0
    html = rep.html.read_text()
    assert "with the largest |error|" in html and "--relabel" not in html


def test_grad_cam_explains_the_one_output_and_reproduces_the_oof_value(run):
    cfg, oof, rep = run
    value_of = dict(zip(oof["id"], oof["prob_Pawpularity"]))
    fold_of = dict(zip(oof["id"], oof["fold"]))
    assert len(rep.cams) == 6
    for c in rep.cams:
        assert c.prob == pytest.approx(value_of[c.id], abs=1e-3) and c.fold == fold_of[c.id]
        assert c.cam.shape == c.image.shape[:2] and 0 <= c.cam.min() and c.cam.max() <= 1
    worst = pd.read_csv(rep.suspects_csv, dtype={"id": str})["id"].head(3).tolist()
    assert [c.id for c in rep.cams[3:]] == worst  # the wrong maps: the largest errors


def test_the_command_writes_the_report(run, tmp_path, demo_cfg):
    cfg, _, _ = run
    report_cmd.main(["--config", str(CONFIG), f"data.dir={cfg.data.dir}", f"experiment.output_dir={cfg.out_dir.parent}",
                     *TINY, "wandb.mode=disabled"])
    assert (cfg.out_dir / "report.html").is_file()
