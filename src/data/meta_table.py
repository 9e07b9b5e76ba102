"""Tabular metadata beside each image (data.meta_cols): the columns, their preprocessing fitted on a
fold's training rows, and the vector each image carries into the model.

SIIM-ISIC's sex, age_approx and anatomical site, PetFinder's twelve 0/1 flags: columns of train.csv and
of the test table (data.test_csv, joined on data.id_col to the sample submission's ids). A column is
numeric when every value present, in either table, reads as a number; otherwise it is categorical.

The preprocessing (`fit_meta`) is a plain dict of lists, floats and strings, so it travels inside
the checkpoint (torch.load(weights_only=True) reads it) and the ensemble, pseudo-labels and the
Kaggle kernel rebuild each fold's vectors from it without the training table:

    numeric      standardised by the training rows' mean and std; a missing value becomes that
                 mean, and a 0/1 "missing" column follows for each column with a hole in either table
    categorical  an index into the training rows' sorted vocabulary, from 1; unknown and missing: 0

The vector of an image (`encode`): [numeric values..., missing flags..., category indices...] as
float32; the model (src/models/meta_model.py) splits it again by the spec's counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.core.config import Config
from src.core.utils import UserError, counted
from src.data.tables import NA_LIKE, label_columns, load_test_table, require_data_dir

SPLITS = ("train", "test")  # where an image's metadata row is read: train.csv or data.test_csv


def _missing(values: pd.Series) -> pd.Series:
    stripped = values.astype(str).str.strip()
    return (stripped == "") | stripped.isin(NA_LIKE)


def _read(path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"data.meta_cols needs the {what} {path}, which does not exist; copy it there, set "
                        "data.test_csv, or set data.meta_cols=null")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_test(cfg: Config) -> pd.DataFrame:
    """The test table (data.test_csv) as text, indexed by data.id_col: all that inference reads."""
    path, id_col = require_data_dir(cfg.data) / cfg.data.test_csv, cfg.data.id_col
    test = _read(path, "test table (data.test_csv)")
    if id_col not in test.columns:
        raise UserError(f"{path} has no column '{id_col}' (data.id_col), so its metadata cannot be joined to the test "
                        "images; fix the file or data.test_csv")
    return test.set_index(id_col, drop=False)


def read_tables(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train.csv, the test table) as text, each indexed by data.id_col."""
    train = _read(require_data_dir(cfg.data) / cfg.data.train_csv, "training table")
    return train.set_index(cfg.data.id_col, drop=False), read_test(cfg)


def _is_path_col(values: pd.Series, exts: list[str]) -> bool:
    """A column of image file names (a path column), which is no metadata."""
    return bool(len(values)) and values.astype(str).str.lower().str.endswith(tuple(exts)).all()


def resolve_cols(cfg: Config, train: pd.DataFrame, test: pd.DataFrame) -> list[str]:
    """data.meta_cols with `auto` made the list: the columns of both tables but the id, label(s),
    group and file-name columns. A listed column missing from either table is refused."""
    d = cfg.data
    if d.meta_cols == "auto":
        skip = {d.id_col, d.label_col, d.group_col, *label_columns(d)}
        cols = [c for c in train.columns if c in test.columns and c not in skip
                and not _is_path_col(train[c], [e.lower() for e in d.image_exts])]
        if not cols:
            raise UserError(f"data.meta_cols=auto found no column shared by {d.train_csv} and {d.test_csv} beside the "
                            "id, label and group; list the columns, or set data.meta_cols=null")
        return cols
    for table, name in ((train, d.train_csv), (test, d.test_csv)):
        lacking = [c for c in d.meta_cols if c not in table.columns]
        if lacking:
            raise UserError(f"data.meta_cols names {lacking[:3]}, which {name} has no column of (its columns: "
                            f"{list(table.columns)[:12]}); fix data.meta_cols or the file")
    return list(d.meta_cols)


def check_meta(cfg: Config, sample_ids: pd.Series | None = None) -> list[str]:
    """The metadata columns, checked before anything is trained or predicted: both tables exist, hold
    the columns, and the test table has every sample id; mixup, which mixes images only, is refused."""
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        raise UserError("train.mixup and train.cutmix mix images but not their data.meta_cols values (a category "
                        "cannot be mixed); set both to 0, or data.meta_cols=null")
    train, test = read_tables(cfg)
    cols = resolve_cols(cfg, train, test)
    if sample_ids is None:
        sample_ids = load_test_table(cfg.data)[0]["id"]
    absent = [i for i in sample_ids if i not in test.index]
    if absent:
        raise UserError(f"{counted(len(absent), 'sample submission id')} (e.g. {absent[:3]}) "
                        f"{'is' if len(absent) == 1 else 'are'} not in {cfg.data.test_csv} ({cfg.data.id_col}), so "
                        "their metadata is unknown; fix data.test_csv, or set data.meta_cols=null")
    return cols


def meta_rows(cfg: Config, ids, split: str) -> pd.DataFrame:
    """The metadata rows (text) of `ids` in their order: from train.csv (`train`; a pseudo-labelled test
    image's from the test table) or from the test table alone (`test`: a Kaggle kernel has no train.csv)."""
    if split == "test":
        table = read_test(cfg)
    else:
        train, test = read_tables(cfg)
        cols = resolve_cols(cfg, train, test)
        table = pd.concat([train[cols], test.loc[~test.index.isin(train.index), cols]])
    absent = [i for i in ids if i not in table.index]
    if absent:
        raise UserError(f"{counted(len(absent), 'image')} (e.g. {absent[:3]}) {'has' if len(absent) == 1 else 'have'} "
                        f"no metadata row in {cfg.data.train_csv if split == 'train' else cfg.data.test_csv}; fix the "
                        "table, or set data.meta_cols=null")
    return table.loc[list(ids)]


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.where(~_missing(values)), errors="coerce")


def _numeric(both: pd.Series) -> bool:
    present = both[~_missing(both)]
    return bool(len(present)) and _numbers(present).notna().all()


def fit_meta(cfg: Config, train_rows: pd.DataFrame) -> dict:
    """The preprocessing of data.meta_cols fitted on `train_rows` (a fold's training part, meta_rows
    of it): a plain dict, see the module docstring. Which columns are numeric, and which get a
    missing flag, is read from both whole tables (no values are learned from them)."""
    train, test = read_tables(cfg)
    cols = resolve_cols(cfg, train, test)
    numeric, categorical = [], []
    for c in cols:
        both = pd.concat([train[c], test[c]])
        if _numeric(both):
            v = _numbers(train_rows[c])
            mean = float(v.mean()) if v.notna().any() else 0.0
            std = float(v.std(ddof=0)) if v.notna().sum() > 1 else 0.0
            numeric.append({"col": c, "mean": mean, "std": std if std > 0 else 1.0,
                            "flag": bool(_missing(both).any())})
        else:
            seen = train_rows[c][~_missing(train_rows[c])].astype(str).str.strip()
            categorical.append({"col": c, "vocab": sorted(set(seen))})
    return {"cols": cols, "numeric": numeric, "categorical": categorical}


def meta_dims(spec: dict) -> tuple[int, list[int]]:
    """(dense width: numeric values and missing flags, the categories' vocabulary sizes with index 0)."""
    dense = len(spec["numeric"]) + sum(n["flag"] for n in spec["numeric"])
    return dense, [len(c["vocab"]) + 1 for c in spec["categorical"]]


def encode(spec: dict, rows: pd.DataFrame, where: str = "the metadata table") -> np.ndarray:
    """The vectors (N, dense + categories) float32 of metadata rows (text) under a fitted spec; `where`
    the rows came from, named when it lacks a column the spec was fitted on."""
    lacking = [c for c in spec["cols"] if c not in rows.columns]
    if lacking:
        raise UserError(f"{where} has no column {lacking[:3]}, which the model was trained with (data.meta_cols); "
                        "restore the column, or retrain without it")
    values, flags, cats = [], [], []
    for n in spec["numeric"]:
        v = _numbers(rows[n["col"]]).to_numpy(dtype=np.float64)
        hole = np.isnan(v)
        values.append(np.where(hole, 0.0, (v - n["mean"]) / n["std"]))  # the mean, standardised: 0
        if n["flag"]:
            flags.append(hole.astype(np.float64))
    for c in spec["categorical"]:
        index = {k: i + 1 for i, k in enumerate(c["vocab"])}
        cats.append(rows[c["col"]].astype(str).str.strip().map(index).fillna(0).to_numpy(dtype=np.float64))
    cols = values + flags + cats
    return np.stack(cols, 1).astype(np.float32) if cols else np.zeros((len(rows), 0), np.float32)
