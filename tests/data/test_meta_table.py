"""data.meta_cols (issue 29): the metadata columns, their preprocessing fitted on a fold's training
rows only, and the vectors: standardised numbers, missing flags, categories with index 0 for unknown."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.utils import UserError
from src.data.folds import fold_tables
from src.data.meta_table import check_meta, encode, fit_meta, meta_dims, meta_rows, read_tables, resolve_cols
from src.training.trainer import fold_meta


@pytest.fixture
def comp(meta_competition, tmp_path):
    """A private copy of the multiclass metadata competition (its csv files may be edited)."""
    src, _, _ = meta_competition("multiclass")
    dest = tmp_path / "comp"
    dest.mkdir()
    for entry in src.iterdir():
        (dest / entry.name).symlink_to(entry.resolve()) if entry.is_dir() else (dest / entry.name).write_bytes(entry.read_bytes())
    return dest


def _cfg(tiny_cfg, comp, tmp_path, *extra):
    return tiny_cfg(comp, tmp_path / "out", "data.meta_cols=auto", "data.n_folds=2", *extra)


def test_auto_takes_the_shared_columns_but_id_label_and_file_names(tiny_cfg, comp, tmp_path):
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    train.assign(file=train["id"] + ".png", extra="x").to_csv(comp / "train.csv", index=False)
    test = pd.read_csv(comp / "test.csv", dtype=str, keep_default_na=False)
    test.assign(file=test["id"] + ".png").to_csv(comp / "test.csv", index=False)
    cfg = _cfg(tiny_cfg, comp, tmp_path)
    assert resolve_cols(cfg, *read_tables(cfg)) == ["hint", "site"]  # not id, label, the file names, nor train-only `extra`
    assert check_meta(cfg) == ["hint", "site"]


def test_statistics_are_the_training_rows_only(tiny_cfg, comp, tmp_path):
    cfg = _cfg(tiny_cfg, comp, tmp_path)
    train_df, val_df, _ = fold_tables(cfg, 0)
    spec, (x_train, x_val) = fold_meta(cfg, train_df, val_df)
    hint = pd.to_numeric(meta_rows(cfg, train_df["id"], "train")["hint"].replace("", np.nan))
    numeric = spec["numeric"][0]
    assert numeric["col"] == "hint" and numeric["flag"] is True
    assert numeric["mean"] == pytest.approx(hint.mean()) and numeric["std"] == pytest.approx(hint.std(ddof=0))
    assert x_train.shape == (len(train_df), 3) and x_val.shape == (len(val_df), 3)  # hint, its flag, site
    assert abs(x_train[:, 0].mean()) < 0.02  # standardised on these rows (missing ones at the mean, 0)

    table = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    table.loc[table["id"].isin(val_df["id"]), "hint"] = "1000"  # every validation row moved far away
    table.loc[table["id"] == val_df["id"].iloc[0], "site"] = "nowhere"
    table.to_csv(comp / "train.csv", index=False)
    moved, _ = fold_meta(cfg, train_df, val_df)
    assert moved == spec  # the validation rows do not reach the statistics nor the vocabulary
    table.loc[table["id"] == train_df["id"].iloc[0], "hint"] = "1000"
    table.to_csv(comp / "train.csv", index=False)
    assert fold_meta(cfg, train_df, val_df)[0]["numeric"][0]["mean"] > numeric["mean"] + 0.5  # a training row does


def test_unknown_and_missing_categories_are_index_0_and_missing_numbers_flagged(tiny_cfg, comp, tmp_path):
    cfg = _cfg(tiny_cfg, comp, tmp_path)
    rows = pd.DataFrame({"hint": ["2", "", "NaN", "4"], "site": ["leg", "palm", "", "head"]})
    spec = fit_meta(cfg, pd.DataFrame({"hint": ["2", "4", ""], "site": ["leg", "head", "torso"]}))
    assert spec["categorical"] == [{"col": "site", "vocab": ["head", "leg", "torso"]}]
    assert meta_dims(spec) == (2, [4])
    x = encode(spec, rows)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], [-1, 0, 0, 1])  # mean 3, std 1; missing at the mean
    np.testing.assert_array_equal(x[:, 1], [0, 1, 1, 0])  # the missing flag
    np.testing.assert_array_equal(x[:, 2], [2, 0, 0, 1])  # leg 2, unknown palm 0, missing 0, head 1


def test_the_spec_is_plain_and_loads_weights_only(tiny_cfg, comp, tmp_path):
    cfg = _cfg(tiny_cfg, comp, tmp_path)
    spec = fit_meta(cfg, meta_rows(cfg, ["digit_0000", "digit_0001", "digit_0002"], "train"))
    buf = io.BytesIO()
    torch.save({"meta": spec}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["meta"] == spec


def test_refusals(tiny_cfg, comp, tmp_path):
    with pytest.raises(UserError, match=r"data.meta_cols names \['age'\]"):
        check_meta(_cfg(tiny_cfg, comp, tmp_path, "data.meta_cols=[hint,age]"))
    with pytest.raises(UserError, match="mix images"):
        check_meta(_cfg(tiny_cfg, comp, tmp_path, "train.mixup=0.2"))
    test = pd.read_csv(comp / "test.csv", dtype=str)
    test.iloc[2:].to_csv(comp / "test.csv", index=False)
    with pytest.raises(UserError, match="2 sample submission ids .* are not in test.csv"):
        check_meta(_cfg(tiny_cfg, comp, tmp_path))
    (comp / "test.csv").unlink()
    with pytest.raises(UserError, match="needs the test table"):
        check_meta(_cfg(tiny_cfg, comp, tmp_path))
    with pytest.raises(UserError, match="data.layout=imagefolder has none"):
        _cfg(tiny_cfg, comp, tmp_path, "data.layout=imagefolder")
