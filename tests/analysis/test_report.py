"""The experiment report and the comparison, on a tiny real run of the digits demo (2 folds, one
short epoch each, trained once for the module): tables checked against the oof.csv files
themselves, Grad-CAM by the fold model that never saw the image, the page opened in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import DEMO_CONFIG, REPO, TINY

import src.report as report_cmd
from src.analysis.comparison import build_comparison
from src.analysis.gradcam import grad_cam, pick_cam_layer
from src.analysis.report import build_report, git_commit, model_input
from src.core.config import load_config
from src.core.runtime import Runtime
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.data.images import read_image
from src.runs.checkpoint import config_diff
from src.runs.layout import fold_paths
from src.runs.members import open_member
from src.training.trainer import train_fold

FOLDS = ("data.n_folds=2",)


def _train(cfg) -> None:
    for k in range(cfg.data.n_folds):
        train_fold(cfg, k)


@pytest.fixture(scope="module")
def run(demo_dir, tmp_path_factory, tiny_cfg):
    """Experiment 'demo' trained on 2 folds, and its report (built once)."""
    out = tmp_path_factory.mktemp("report")
    cfg = tiny_cfg(demo_dir, out, *FOLDS)
    _train(cfg)
    return cfg, build_report(cfg, n_wrong=12, n_cam=4)


def _oof_files(cfg) -> pd.DataFrame:
    """The oof.csv files as written by training, read here without the report's code."""
    return pd.concat([pd.read_csv(fold_paths(cfg.out_dir, k).oof, dtype={"id": str, "label": str})
                      for k in range(cfg.data.n_folds)], ignore_index=True)


def test_confusion_counts_every_oof_row_once(run):
    cfg, rep = run
    oof = _oof_files(cfg)
    classes = [c.removeprefix("prob_") for c in oof.columns if c.startswith("prob_")]
    assert rep.counts.sum() == len(oof) == len(pd.read_csv(Path(cfg.data.dir) / "train.csv"))
    pred = oof[[f"prob_{c}" for c in classes]].to_numpy().argmax(1)
    expected = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(expected, (oof["target"].to_numpy(), pred), 1)
    assert (rep.counts == expected).all()
    assert rep.per_class["support"].tolist() == expected.sum(1).tolist()
    assert rep.per_class["class"].tolist() == classes


def test_suspect_list_is_every_oof_image_by_loss(run):
    cfg, rep = run
    oof = _oof_files(cfg).set_index("id")
    sus = pd.read_csv(rep.suspects_csv, dtype={"id": str, "label": str, "predicted": str}, keep_default_na=False)
    assert sorted(sus["id"]) == sorted(oof.index)  # every OOF id, once
    assert (np.diff(sus["loss"].to_numpy()) <= 0).all()  # highest loss first
    for r in sus.itertuples():
        row = oof.loc[r.id]
        probs = row[[c for c in oof.columns if c.startswith("prob_")]].astype(float)
        assert r.fold == row["fold"] and r.label == row["label"]
        assert r.predicted == probs.idxmax().removeprefix("prob_")
        assert r.loss == pytest.approx(-np.log(probs[f"prob_{r.label}"]), rel=1e-5)
        assert r.prob == pytest.approx(probs.max(), rel=1e-5)
    assert (sus["reviewed_label"] == "").all()


def test_cv_table_has_every_fold_and_metric(run):
    cfg, rep = run
    cv = rep.cv.set_index("fold")
    assert list(cv.index) == ["0", "1", "oof"]
    for col in ("accuracy", "f1_macro", "log_loss", "roc_auc"):
        assert cv[col].notna().all(), col
    oof = _oof_files(cfg)
    acc = (oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy().argmax(1) == oof["target"]).mean()
    assert cv.loc["oof", "accuracy"] == pytest.approx(acc)
    for k in (0, 1):
        assert cv.loc[str(k), "images"] == (oof["fold"] == k).sum()


def test_gradcam_by_the_fold_that_never_saw_the_image(run):
    cfg, rep = run
    split, _, _ = load_or_create_folds(cfg, create=False)
    fold_of, path_of = dict(zip(split["id"], split["fold"])), dict(zip(split["id"], split["path"]))
    assert len(rep.cams) == 8
    assert sum(c.label == c.predicted for c in rep.cams) == 4 and sum(c.label != c.predicted for c in rep.cams) == 4
    for c in rep.cams:
        assert c.cam.shape == read_image(path_of[c.id]).shape[:2] == (cfg.aug.img_size,) * 2
        assert c.cam.min() >= 0 and c.cam.max() <= 1 and c.cam.std() > 1e-3, c.id  # not constant
        assert c.fold == fold_of[c.id]  # its model trained on the other fold only
        assert c.prob == pytest.approx(c.prob_oof, abs=1e-4)  # and reproduces the OOF prediction
    # The OOF check tells the models apart: the other fold's model gives another probability.
    m = open_member("demo", cfg.experiment.output_dir, "warn", cfg.data.dir)
    rt = Runtime.from_cfg(cfg.runtime)
    c = rep.cams[0]
    other = m.model(1 - c.fold, rt)
    x, _ = model_input(m, 1 - c.fold, other, path_of[c.id], rt)
    _, probs = grad_cam(other, x, rep.cam_layer)
    assert abs(probs[m.classes.index(c.predicted)] - c.prob_oof) > 1e-4


@pytest.mark.parametrize("name,kwargs", [("test_resnet", {}), ("test_convnext", {}), ("test_vit", {"img_size": 64}),
                                         ("test_mambaout", {})])
def test_gradcam_fits_cnn_nhwc_and_token_models(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    cam, probs = grad_cam(model, x, pick_cam_layer(model, 64))
    assert cam.shape == (64, 64) and cam.std() > 1e-3 and probs.sum() == pytest.approx(1, abs=1e-5)


def test_report_page_is_self_contained(run):
    cfg, rep = run
    text = rep.html.read_text()
    assert len(re.findall(r'src="data:image/png;base64,', text)) == len(rep.figures) == 7
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing fetched from elsewhere
    commit = git_commit()
    assert f"code commit at report time: {commit}" in text
    in_git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode == 0
    if in_git:  # a checkout names its commit; a copy (git archive, a wheel) says why it cannot
        assert re.fullmatch(r"[0-9a-f]{40}", commit.split()[0])
    else:
        assert commit.startswith("unknown (not a git checkout")
    assert "name: test_resnet" in text  # the resolved config
    for p in rep.figures.values():
        assert p.parent == cfg.out_dir / "report" and p.stat().st_size > 1000


def test_report_in_headless_chromium(run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium); the page is not opened")
    _, rep = run
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1400,2400", rep.html.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1400)
    dark = (img < 128).mean()
    assert 0.02 < dark < 0.6, dark  # text, tables and figures, not a blank or an error page
    rows = (img < 200).any(1)
    assert rows[:1200].mean() > 0.3 and rows[1200:].mean() > 0.3  # drawn down the page, not one line


def test_compare_one_row_per_experiment(run, demo_dir, tiny_cfg):
    cfg, _ = run
    other = tiny_cfg(demo_dir, Path(cfg.experiment.output_dir), *FOLDS, "experiment.name=demo_sgd",
                     "optim.name=sgd", "optim.lr=0.05")
    _train(other)
    cmp = build_comparison(cfg, ["demo", "demo_sgd"])
    t = cmp.table
    assert t["experiment"].tolist() == ["demo", "demo_sgd"]
    assert t["optim.name"].tolist() == ["adamw", "sgd"] and "optim.lr" in t
    for name, row in zip(["demo", "demo_sgd"], t.itertuples()):
        oof = _oof_files(load_config(DEMO_CONFIG, [f"experiment.output_dir={cfg.experiment.output_dir}",
                                                   f"experiment.name={name}", *FOLDS]))
        acc = (oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy().argmax(1) == oof["target"]).mean()
        assert row.oof_accuracy == pytest.approx(acc) and row.oof_images == len(oof)
    assert pd.read_csv(cmp.html.parent / "compare.csv")["experiment"].tolist() == ["demo", "demo_sgd"]
    assert cmp.html.read_text().count("data:image/png;base64,") == 1


def test_compare_configs_differ_only_in_the_optimizer():
    files = sorted((REPO / "configs" / "compare").glob("*.yaml"))
    assert len(files) >= 3
    cfgs = [load_config(f).to_dict() for f in files]
    for c in cfgs[1:]:
        diff = config_diff(cfgs[0], c)
        assert diff and all(k.startswith(("optim.", "experiment.name")) for k in diff), diff


def test_unknown_experiment_is_one_sentence(run, capsys):
    cfg, _ = run
    args = ["--config", str(DEMO_CONFIG), "--experiment", "nope", f"experiment.output_dir={cfg.experiment.output_dir}",
            f"data.dir={cfg.data.dir}", *TINY]
    with pytest.raises(UserError, match="does not exist"):
        report_cmd.main(args)
    with pytest.raises(UserError, match="two or more"):
        report_cmd.main(args[:2] + ["--compare", "demo"] + args[4:])
    assert not (Path(cfg.experiment.output_dir) / "nope").exists()


def test_page_warns_when_best_pt_and_oof_csv_disagree(run, tmp_path):
    cfg, _ = run
    shutil.copytree(cfg.experiment.output_dir, tmp_path / "out")
    for k in (0, 1):
        path = tmp_path / "out" / "demo" / f"fold{k}" / "oof.csv"
        oof = pd.read_csv(path, dtype=str, keep_default_na=False)
        cols = [c for c in oof.columns if c.startswith("prob_")]
        oof[cols] = oof[cols[::-1]].to_numpy()  # the probabilities of other classes
        oof.to_csv(path, index=False)
    moved = load_config(DEMO_CONFIG, [f"experiment.output_dir={tmp_path / 'out'}", f"data.dir={cfg.data.dir}", *FOLDS])
    rep = build_report(moved, n_wrong=2, n_cam=2)
    assert all(abs(c.prob - c.prob_oof) > 1e-3 for c in rep.cams)
    assert "do not reproduce oof.csv" in rep.html.read_text()
    assert "do not reproduce oof.csv" not in run[1].html.read_text()
