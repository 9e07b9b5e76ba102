"""Pixel tables (data.layout=pixels): rows become .npy files once, exactly; Digit Recognizer's
row-number ids end to end; Statoil-style JSON records with float bands."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import PIXEL_OVERRIDES

from src.core.utils import UserError
from src.data.arrays import read_array
from src.data.image_cache import cache_root
from src.data.tables import load_test_table, load_train_table
from src.ensembling.pipeline import run as ensemble
from src.evaluation.scoring import score_submission
from src.training.trainer import train_fold


def _cfg(tiny_cfg, data, out, *extra):
    return tiny_cfg(data, out, *PIXEL_OVERRIDES, "data.n_folds=2", *extra)


def test_a_row_becomes_its_pixels_reshaped(pixel_dir, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, pixel_dir, tmp_path / "out")
    table = load_train_table(cfg.data, cache_root(cfg))
    raw = pd.read_csv(pixel_dir / "train.csv")
    assert table["id"].tolist() == [str(i) for i in range(1, len(raw) + 1)]  # no ImageId column: row numbers
    assert table["label"].tolist() == raw["Label"].astype(str).tolist()
    for k in (0, 7, len(raw) - 1):
        stored = np.load(table["path"][k])
        assert stored.dtype == np.uint8 and stored.shape == (8, 8, 1)
        np.testing.assert_array_equal(stored[..., 0], raw.filter(like="pixel").iloc[k].to_numpy().reshape(8, 8))
        assert read_array(table["path"][k]).shape == (8, 8, 3)  # grayscale uint8: a photo, as a grayscale PNG reads
    test, sample = load_test_table(cfg.data, cache_root(cfg))
    assert test["id"].tolist() == sample["ImageId"].tolist()
    first = pd.read_csv(pixel_dir / "test.csv").iloc[0].to_numpy().reshape(8, 8)
    np.testing.assert_array_equal(np.load(test["path"][0])[..., 0], first)


def test_rows_are_written_once_and_again_when_the_table_changes(pixel_dir, tiny_cfg, tmp_path):
    data = tmp_path / "c"
    shutil.copytree(pixel_dir, data)
    cfg = _cfg(tiny_cfg, data, tmp_path / "out")
    first = load_train_table(cfg.data, cache_root(cfg))
    times = [os.stat(p).st_mtime_ns for p in first["path"]]
    again = load_train_table(cfg.data, cache_root(cfg))
    assert again.equals(first) and [os.stat(p).st_mtime_ns for p in again["path"]] == times  # read, not rewritten
    raw = pd.read_csv(data / "train.csv")
    before = int(raw.loc[0, "pixel0"])
    raw.loc[0, "pixel0"] = 255
    raw.to_csv(data / "train.csv", index=False)
    changed = load_train_table(cfg.data, cache_root(cfg))
    assert changed["path"][0] != first["path"][0] and np.load(changed["path"][0])[0, 0, 0] == 255
    assert before != 255 and np.load(first["path"][0])[0, 0, 0] == before  # the old table's files, no longer read


def _statoil(root, n=24):
    """Statoil's train.json/test.json: id, band_1, band_2 (5x5 dB floats), inc_angle (some "na"), is_iceberg."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)

    def records(k, labelled):
        out = []
        for i in range(k):
            y = i % 2
            rec = {"id": f"r{i:03d}", "band_1": (rng.normal(-20, 3, 25) + 8 * y).tolist(),
                   "band_2": rng.normal(-25, 3, 25).tolist(), "inc_angle": "na" if i % 5 == 0 else 39.2}
            out.append(rec | ({"is_iceberg": y} if labelled else {}))
        return out

    train = records(n, True)
    (root / "train.json").write_text(json.dumps(train))
    test = records(8, False)
    (root / "test.json").write_text(json.dumps(test))
    pd.DataFrame({"id": [r["id"] for r in test], "is_iceberg": 0.5}).to_csv(root / "sample_submission.csv", index=False)
    return train


STATOIL = ("data.layout=pixels", "data.pixel_shape=[5,5]", "data.pixel_cols=[band_1,band_2]", "data.train_csv=train.json",
           "data.test_csv=test.json", "data.label_col=is_iceberg", "data.task=binary", "metric.name=log_loss")


def test_json_records_keep_their_float_values_as_channels(tiny_cfg, tmp_path):
    train = _statoil(tmp_path / "statoil")
    cfg = tiny_cfg(tmp_path / "statoil", tmp_path / "out", *STATOIL)
    table = load_train_table(cfg.data, cache_root(cfg))
    stored = np.load(table["path"][3])
    assert stored.dtype == np.float64 and stored.shape == (5, 5, 2)
    np.testing.assert_array_equal(stored[..., 0], np.reshape(train[3]["band_1"], (5, 5)))  # exact, not rounded
    np.testing.assert_array_equal(stored[..., 1], np.reshape(train[3]["band_2"], (5, 5)))
    assert read_array(table["path"][3]).dtype == np.float32


@pytest.mark.slow
def test_digit_recognizer_end_to_end(pixel_dir, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, pixel_dir, tmp_path / "out", "model.in_chans=null")
    for k in range(2):
        train_fold(cfg, k)
    out = ensemble(cfg, tta=["identity", "hflip"], out=tmp_path / "sub" / "s.csv")
    sub = pd.read_csv(out)
    assert sub["ImageId"].tolist() == list(range(1, 41)) and list(sub.columns) == ["ImageId", "Label"]
    solution = pd.read_csv(pixel_dir / "solution.csv")
    scores = score_submission(out, pixel_dir / "solution.csv", cfg)
    assert scores["accuracy"] == pytest.approx((sub["Label"].to_numpy() == solution["Label"].to_numpy()).mean())


def test_a_test_table_that_does_not_match_the_sample_ids_stops(pixel_dir, tiny_cfg, tmp_path):
    data = tmp_path / "c"
    shutil.copytree(pixel_dir, data)
    sample = pd.read_csv(data / "sample_submission.csv")
    pd.concat([sample, sample.tail(1).assign(ImageId=41)]).to_csv(data / "sample_submission.csv", index=False)
    cfg = _cfg(tiny_cfg, data, tmp_path / "out")
    with pytest.raises(UserError, match=r"test.csv holds 40 test rows and sample_submission.csv 41 ids, and 1 sample "
                                        r"id \(e.g. \['41'\]\) is not among the table's ids \(its rows numbered 1..40\)"):
        load_test_table(cfg.data, cache_root(cfg))


@pytest.mark.slow
def test_the_kaggle_notebook_reads_the_test_pixels_from_its_input(pixel_dir, tiny_cfg, tmp_path):
    import src.kaggle_kernel as kaggle_kernel
    from src.core.cli import run_cli
    from src.core.config import CONFIG_DIR

    extra = [*PIXEL_OVERRIDES, "data.n_folds=2", "experiment.name=pix", "train.epochs=1", "train.limit_batches=3",
             "model.name=test_resnet", "loader.num_workers=0", "wandb.mode=disabled"]
    cfg = _cfg(tiny_cfg, pixel_dir, tmp_path / "out", "experiment.name=pix")
    for k in range(2):
        train_fold(cfg, k)
    local = ensemble(cfg, tta=["identity", "hflip"], out=tmp_path / "local.csv")
    common = ["--config", str(CONFIG_DIR / "demo.yaml"), "--out", str(tmp_path / "build"), f"data.dir={pixel_dir}",
              f"experiment.output_dir={tmp_path / 'out'}"]
    run_cli(kaggle_kernel.main, ["build", *common[:2], "--experiments", "pix", "--tta", "identity", "hflip",
                                 "--no-wheels", *common[2:], *extra])
    run_cli(kaggle_kernel.main, ["rehearse", *common, *extra])
    rehearsed = tmp_path / "build" / "rehearsal" / "submission.csv"
    assert rehearsed.read_bytes() == local.read_bytes()


@pytest.mark.slow
def test_a_pixel_table_trains_a_regression(pixel_dir, tiny_cfg, tmp_path):
    from src.runs.layout import fold_paths

    cfg = _cfg(tiny_cfg, pixel_dir, tmp_path / "out", "data.task=regression", "data.target_range=[0,9]",
               "metric.name=rmse", "loss.name=mse")
    result = train_fold(cfg, 0)
    oof = pd.read_csv(fold_paths(cfg.out_dir, 0).oof)
    assert [c for c in oof.columns if c.startswith("prob_")] == ["prob_Label"] and oof["prob_Label"].between(0, 9).all()
    assert result["rmse"] == pytest.approx(np.sqrt(((oof["label"] - oof["prob_Label"]) ** 2).mean()))
