"""Images as .npy arrays (SETI's (6, H, W) float16): read channels last as float32, cached with
their dtype, normalised with the training arrays' own statistics, a 6-channel model, end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_array_competition
from sklearn.metrics import roc_auc_score

from src.analysis.report import build_report
from src.core.runtime import Norm
from src.data.arrays import read_array
from src.data.image_cache import ImageCache
from src.data.loaders import with_image_inputs
from src.data.tables import load_train_table
from src.ensembling.pipeline import run as ensemble
from src.evaluation.scoring import score_submission
from src.runs.checkpoint import load_checkpoint
from src.runs.layout import fold_paths
from src.training.trainer import train_fold

SETI = ("data.image_exts=[.npy]", "data.task=binary", "data.label_col=target", "metric.name=roc_auc",
        "data.n_folds=2", "aug.hflip=true", "aug.mean=null", "aug.std=null")  # demo.yaml sets RGB ones


@pytest.fixture(scope="module")
def seti(tmp_path_factory):
    return build_array_competition(tmp_path_factory.mktemp("seti") / "seti")


def test_arrays_read_channels_last_and_float_values_survive_the_cache(seti, tmp_path):
    path = sorted((seti / "train").rglob("*.npy"))[0]
    raw = np.load(path)
    img = read_array(path)
    assert img.dtype == np.float32 and img.shape == (16, 12, 6)
    np.testing.assert_array_equal(img, raw.astype(np.float32).transpose(1, 2, 0))  # float16 exactly in float32
    cache = ImageCache(tmp_path / "cache", 16)
    built, again = cache.load(str(path)), cache.read(str(path))
    assert again.dtype == np.float32 and again.shape == (16, 16, 6) and np.array_equal(built, again)
    assert len(np.unique(again)) > 256  # not squashed to uint8


def test_statistics_are_numpys_per_channel_mean_and_std_and_normalise_on_the_device(seti, tiny_cfg, tmp_path):
    cfg = tiny_cfg(seti, tmp_path / "out", *SETI)
    paths = load_train_table(cfg.data)["path"].tolist()
    resolved = with_image_inputs(cfg, paths)
    stack = np.stack([np.load(p).astype(np.float64) for p in paths])  # (N, 6, H, W)
    assert resolved.model.in_chans == 6
    np.testing.assert_allclose(resolved.aug.mean, stack.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(resolved.aug.std, stack.std(axis=(0, 2, 3)), rtol=1e-6)
    x = torch.from_numpy(stack[:4].astype(np.float32))
    out = Norm(resolved.aug.mean, resolved.aug.std)(x)
    expected = (stack[:4] - stack.mean(axis=(0, 2, 3))[:, None, None]) / stack.std(axis=(0, 2, 3))[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.slow
def test_a_six_channel_float16_world_end_to_end(seti, tiny_cfg, tmp_path):
    cfg = tiny_cfg(seti, tmp_path / "out", *SETI)
    for k in range(2):
        train_fold(cfg, k)
    ckpt = load_checkpoint(fold_paths(cfg.out_dir, 0).best)
    assert ckpt["config"]["model"]["in_chans"] == 6 and len(ckpt["config"]["aug"]["mean"]) == 6
    first_conv = next(v for v in ckpt["model"].values() if v.ndim == 4)
    assert first_conv.shape[1] == 6
    out = ensemble(cfg, tta=["identity", "hflip", "vflip"], out=tmp_path / "sub" / "s.csv")
    sub = pd.read_csv(out)
    solution = pd.read_csv(seti / "solution.csv")
    assert sub["id"].tolist() == solution["id"].tolist() and sub["target"].between(0, 1).all()
    scores = score_submission(out, seti / "solution.csv", cfg)
    assert scores["roc_auc"] == pytest.approx(roc_auc_score(solution["target"], sub["target"]))
    build_report(cfg, None, n_wrong=4, n_cam=2, cam_layer=None)  # Grad-CAM over channel 0 of the arrays
    assert (cfg.out_dir / "report.html").stat().st_size > 0 and (cfg.out_dir / "report" / "gradcam_wrong.png").is_file()
