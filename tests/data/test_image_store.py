"""HDF5 image containers (ISIC 2024's train-image.hdf5: JPEG bytes keyed by isic_id): extracted
once into the cache, then ordinary files; an id without a key stops in one sentence."""

from __future__ import annotations

import os
import shutil

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import build_store_competition

from src.core.utils import UserError
from src.data.image_cache import cache_root
from src.data.images import read_image
from src.data.tables import load_test_table, load_train_table
from src.ensembling.pipeline import run as ensemble
from src.evaluation.scoring import score_submission
from src.training.trainer import train_fold

ISIC = ("data.image_store=train-image.hdf5", "data.test_image_store=test-image.hdf5", "data.id_col=isic_id",
        "data.label_col=target", "data.n_folds=2")


@pytest.fixture(scope="module")
def isic(demo_dir, tmp_path_factory):
    return build_store_competition(demo_dir, tmp_path_factory.mktemp("isic") / "isic")


def test_the_stored_jpeg_is_extracted_once_and_decodes_as_its_bytes(isic, tiny_cfg, tmp_path):
    cfg = tiny_cfg(isic, tmp_path / "out", *ISIC)
    table = load_train_table(cfg.data, cache_root(cfg))
    assert table["path"].str.endswith(".jpg").all() and table["id"][0] == "ISIC_" + table["path"][0].split("/")[-1][5:-4]
    with h5py.File(isic / "train-image.hdf5") as f:
        raw = f[table["id"][0]][()].tobytes()
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(read_image(table["path"][0]).astype(int) - expected).max() <= 1  # Pillow's and cv2's JPEG decoders
    times = [os.stat(p).st_mtime_ns for p in table["path"]]
    assert [os.stat(p).st_mtime_ns for p in load_train_table(cfg.data, cache_root(cfg))["path"]] == times
    test, _ = load_test_table(cfg.data, cache_root(cfg))
    assert len(test) == 20 and test["path"].map(os.path.isfile).all()


def test_an_id_without_a_key_is_named(isic, tiny_cfg, tmp_path):
    data = tmp_path / "isic"
    shutil.copytree(isic, data)
    table = pd.read_csv(data / "train.csv", dtype=str)
    table.loc[3, "isic_id"] = "ISIC_missing"
    table.to_csv(data / "train.csv", index=False)
    cfg = tiny_cfg(data, tmp_path / "out", *ISIC)
    with pytest.raises(UserError, match="1 training id has no key in .*train-image.hdf5 .*ISIC_missing"):
        load_train_table(cfg.data, cache_root(cfg))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_hdf5_world_end_to_end(isic, tiny_cfg, tmp_path):
    cfg = tiny_cfg(isic, tmp_path / "out", *ISIC)
    for k in range(2):
        train_fold(cfg, k)
    out = ensemble(cfg, tta=["identity", "zoom0.95"], out=tmp_path / "sub" / "s.csv")
    sub, sol = pd.read_csv(out, dtype=str), pd.read_csv(isic / "solution.csv", dtype=str)
    assert sub["isic_id"].tolist() == sol["isic_id"].tolist()
    scores = score_submission(out, isic / "solution.csv", cfg)
    assert scores["accuracy"] == pytest.approx((sub["target"] == sol["target"]).mean())
