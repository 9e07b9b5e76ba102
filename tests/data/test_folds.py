"""Folds: stratified and balanced, stable across runs, grouped, guarded against edited data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.core.tasks.base import assign_folds
from src.core.utils import UserError
from src.data.folds import folds_path, load_or_create_folds


@pytest.fixture
def demo_copy(demo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the digits competition that a test may edit."""
    return Path(shutil.copytree(demo_dir, tmp_path / "digits"))


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


# ---------------------------------------------------------------- the demo split


def test_demo_split_is_balanced(demo_dir: Path, tmp_path: Path, demo_cfg):
    df, classes, path = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out"))
    assert classes == [str(i) for i in range(10)]
    assert len(df) == 1437
    counts = pd.crosstab(df["label"], df["fold"])
    assert counts.columns.tolist() == [0, 1, 2, 3, 4]
    spread = counts.max(axis=1) - counts.min(axis=1)
    assert (spread <= 1).all(), counts
    sizes = df["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1  # StratifiedKFold also balances fold sizes
    assert df["target"].tolist() == [classes.index(lab) for lab in df["label"]]
    assert df["target"].dtype == np.int64


def test_every_id_in_exactly_one_fold(demo_dir: Path, tmp_path: Path, demo_cfg):
    _, _, path = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out"))
    saved = pd.read_csv(path, dtype={"id": str, "label": str})
    assert saved.columns.tolist() == ["id", "label", "fold"]
    train = pd.read_csv(demo_dir / "train.csv", dtype=str)
    assert not saved["id"].duplicated().any()
    assert sorted(saved["id"]) == sorted(train["id"])
    assert set(saved["fold"]) == set(range(5))
    per_fold = [set(saved.loc[saved["fold"] == k, "id"]) for k in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not per_fold[i] & per_fold[j]


def test_folds_file_name_and_meta(demo_dir: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_dir, tmp_path / "out")
    _, classes, path = load_or_create_folds(cfg)
    assert path == tmp_path / "out" / "folds" / "digits_k5_s42.csv" == folds_path(cfg)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["classes"] == classes and meta["n_folds"] == 5 and meta["seed"] == 42 and meta["group_col"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits_k5_s42.csv", "digits_k5_s42.json"]


def test_split_is_identical_across_runs(demo_dir: Path, tmp_path: Path, demo_cfg):
    _, _, p1 = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out1"))
    first = p1.read_bytes()
    first_meta = p1.with_suffix(".json").read_bytes()
    # delete and recreate in the same place
    shutil.rmtree(tmp_path / "out1")
    _, _, p1b = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out1"))
    assert p1b.read_bytes() == first
    # and in another output dir
    _, _, p2 = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out2"))
    assert p2 != p1 and p2.read_bytes() == first
    assert p2.with_suffix(".json").read_bytes() == first_meta


def test_existing_split_is_reused_not_rewritten(demo_dir: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_dir, tmp_path / "out")
    df1, _, path = load_or_create_folds(cfg)
    before = path.stat().st_mtime_ns, path.read_bytes()
    df2, _, _ = load_or_create_folds(cfg, create=False)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    pd.testing.assert_frame_equal(df1, df2)


def test_create_false_without_file(demo_dir: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_dir, tmp_path / "out")
    with pytest.raises(UserError, match="python -m src.folds"):
        load_or_create_folds(cfg, create=False)
    assert not (tmp_path / "out").exists()


def test_changing_fold_seed_writes_a_different_file(demo_dir: Path, tmp_path: Path, demo_cfg):
    df_a, _, pa = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out"))
    df_b, _, pb = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out", "data.fold_seed=7"))
    assert pa != pb and pb.name == "digits_k5_s7.csv"
    assert pa.is_file() and pb.is_file()
    assert pa.read_bytes() != pb.read_bytes()
    assert (df_a.set_index("id")["fold"] != df_b.set_index("id")["fold"]).any()


def test_changing_n_folds_writes_a_different_file(demo_dir: Path, tmp_path: Path, demo_cfg):
    df, _, path = load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out", "data.n_folds=3"))
    assert path.name == "digits_k3_s42.csv"
    assert sorted(df["fold"].unique()) == [0, 1, 2]


def test_edited_train_csv_stops_and_keeps_the_split(demo_copy: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_copy, tmp_path / "out")
    _, _, path = load_or_create_folds(cfg)
    before = path.read_bytes()
    meta_before = path.with_suffix(".json").read_bytes()
    train = pd.read_csv(demo_copy / "train.csv", dtype=str)
    train.drop(index=17).to_csv(demo_copy / "train.csv", index=False)
    with pytest.raises(UserError) as e:
        load_or_create_folds(cfg)
    msg = str(e.value)
    assert str(path) in msg and "1 removed" in msg and "0 ids added" in msg
    assert path.read_bytes() == before
    assert path.with_suffix(".json").read_bytes() == meta_before


def test_relabelled_train_csv_stops_and_keeps_the_split(demo_copy: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_copy, tmp_path / "out")
    _, _, path = load_or_create_folds(cfg)
    before = path.read_bytes()
    train = pd.read_csv(demo_copy / "train.csv", dtype=str)
    train.loc[3, "label"] = str((int(train.loc[3, "label"]) + 1) % 10)
    train.to_csv(demo_copy / "train.csv", index=False)
    with pytest.raises(UserError, match="1 labels"):
        load_or_create_folds(cfg)
    assert path.read_bytes() == before


def test_cli_style_too_many_folds_names_classes(demo_dir: Path, tmp_path: Path, demo_cfg):
    with pytest.raises(UserError) as e:
        load_or_create_folds(demo_cfg(demo_dir, tmp_path / "out", "data.n_folds=500"))
    assert "10 classes" in str(e.value) and "'0' (" in str(e.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- small hand-made competitions


def _grouped_comp(root: Path) -> Path:
    """40 images in 12 groups; labels constant within a group, 2 classes."""
    rows = []
    rng = np.random.default_rng(0)
    for g in range(12):
        label = "cat" if g % 2 else "dog"
        for _ in range(int(rng.integers(2, 6))):
            i = len(rows)
            _png(root / "train" / f"im{i:03d}.png", value=i)
            rows.append({"id": f"im{i:03d}", "label": label, "patient": f"p{g:02d}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def test_group_split_keeps_each_group_in_one_fold(tmp_path: Path, demo_cfg):
    comp = _grouped_comp(tmp_path / "comp")
    cfg = demo_cfg(comp, tmp_path / "out", "data.group_col=patient", "data.n_folds=3")
    df, classes, path = load_or_create_folds(cfg)
    assert classes == ["cat", "dog"]
    assert path.name == "comp_k3_s42_gpatient.csv"
    assert "group" in df.columns
    folds_per_group = df.groupby("group")["fold"].nunique()
    assert (folds_per_group == 1).all(), folds_per_group
    assert set(df["fold"]) == {0, 1, 2}
    saved = pd.read_csv(path, dtype=str)
    assert saved.columns.tolist() == ["id", "label", "fold", "group"]
    assert json.loads(path.with_suffix(".json").read_text())["group_col"] == "patient"


def test_ungrouped_split_of_same_data_mixes_groups(tmp_path: Path, demo_cfg):
    # shows the group test above can fail: without group_col, groups do get split
    comp = _grouped_comp(tmp_path / "comp")
    df, _, _ = load_or_create_folds(demo_cfg(comp, tmp_path / "out", "data.n_folds=3"))
    raw = pd.read_csv(comp / "train.csv", dtype=str).set_index("id")
    df["patient"] = df["id"].map(raw["patient"])
    assert (df.groupby("patient")["fold"].nunique() > 1).any()


def test_class_smaller_than_n_folds_is_named(tmp_path: Path, demo_cfg):
    comp = tmp_path / "comp"
    rows = []
    for label, n in (("common", 9), ("rare", 2), ("other", 6)):
        for _ in range(n):
            i = len(rows)
            _png(comp / "train" / f"im{i:02d}.png", value=i)
            rows.append({"id": f"im{i:02d}", "label": label})
    pd.DataFrame(rows).to_csv(comp / "train.csv", index=False)
    with pytest.raises(UserError) as e:
        load_or_create_folds(demo_cfg(comp, tmp_path / "out", "data.n_folds=3"))
    msg = str(e.value)
    assert "'rare' (2)" in msg and "common" not in msg and "other" not in msg and "data.n_folds" in msg
    assert not (tmp_path / "out").exists()
    # with 2 folds the same data splits
    df, _, _ = load_or_create_folds(demo_cfg(comp, tmp_path / "out", "data.n_folds=2"))
    assert df.loc[df["label"] == "rare", "fold"].nunique() == 2


def test_assign_folds_is_a_pure_function():
    df = pd.DataFrame({"label": list("aabbbcccc") * 3})
    a = assign_folds(df, 3, 5, grouped=False)
    b = assign_folds(df.copy(), 3, 5, grouped=False)
    assert a.dtype == np.int64 and (a >= 0).all()
    np.testing.assert_array_equal(a, b)


def test_labels_that_look_like_missing_values_survive_a_second_run(tmp_path: Path, demo_cfg):
    # pandas reads "None", "NA" and "nan" as missing by default; the saved split must not.
    root = tmp_path / "comp"
    labels = ["None", "NA", "nan", "cat"] * 6
    for i in range(len(labels)):
        _png(root / "train" / f"im{i}.png", 10 * i)
    pd.DataFrame({"id": [f"im{i}" for i in range(len(labels))], "label": labels}).to_csv(root / "train.csv", index=False)
    cfg = demo_cfg(root, tmp_path / "out", "data.n_folds=3", "data.na_labels=keep")  # train them as classes
    first, classes, _ = load_or_create_folds(cfg)
    again, classes2, _ = load_or_create_folds(cfg)
    assert sorted(classes) == sorted(set(labels)) and classes2 == classes
    assert list(again["label"]) == list(first["label"])


def test_fewer_groups_than_folds_is_a_user_error(tmp_path: Path, demo_cfg):
    root = tmp_path / "comp"
    n = 20
    for i in range(n):
        _png(root / "train" / f"im{i}.png", 10 * i)
    pd.DataFrame({"id": [f"im{i}" for i in range(n)], "label": ["a", "b"] * (n // 2),
                  "patient": [f"p{i % 3}" for i in range(n)]}).to_csv(root / "train.csv", index=False)
    with pytest.raises(UserError, match="3 groups for 5 folds"):
        load_or_create_folds(demo_cfg(root, tmp_path / "out", "data.group_col=patient"))
    assert not (tmp_path / "out").exists()
