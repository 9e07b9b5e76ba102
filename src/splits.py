"""Stratified folds, assigned once per competition and shared by every experiment and ensemble.

The split is written to outputs/folds/<competition>_k<n>_s<seed>[_g<group>].csv with its class
list beside it (.json). A different fold count or seed is a different file; an existing file
whose ids no longer match train.csv stops the run instead of being rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from src.config import Config
from src.data import load_train_table, sorted_classes
from src.utils import UserError, atomic_save, atomic_write_text


def folds_path(cfg: Config) -> Path:
    d = cfg.data
    name = f"{Path(d.dir).resolve().name}_k{d.n_folds}_s{d.fold_seed}" + (f"_g{d.group_col}" if d.group_col else "")
    return Path(cfg.experiment.output_dir) / "folds" / f"{name}.csv"


def assign_folds(df: pd.DataFrame, n_folds: int, seed: int, grouped: bool) -> np.ndarray:
    """Fold index per row: StratifiedKFold, or StratifiedGroupKFold on df['group']."""
    counts = df["label"].value_counts()
    small = counts[counts < n_folds]
    if len(small):
        shown = ", ".join(f"'{k}' ({v})" for k, v in small.head(10).items())
        raise UserError(
            f"{len(small)} classes have fewer images than the {n_folds} folds: {shown}; "
            "add images, merge or drop those classes, or lower data.n_folds"
        )
    fold = np.full(len(df), -1, dtype=np.int64)
    if grouped and df["group"].nunique() < n_folds:
        raise UserError(f"data.group_col has {df['group'].nunique()} groups for {n_folds} folds; "
                        "lower data.n_folds or use a finer group column")
    if grouped:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, df["label"], groups=df["group"])
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, df["label"])
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return fold


def load_or_create_folds(cfg: Config, create: bool = True, table: pd.DataFrame | None = None
                         ) -> tuple[pd.DataFrame, list[str], Path]:
    """(train table with a `fold` and a `target` column, class names, folds file path).

    `table` is the already loaded training table (load_train_table), to avoid reading it twice.
    """
    df = load_train_table(cfg.data) if table is None else table
    path = folds_path(cfg)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        saved = pd.read_csv(path, dtype={"id": str, "label": str, "group": str}, keep_default_na=False)
        classes = json.loads(meta_path.read_text())["classes"]
        now, before = set(df["id"]), set(saved["id"])
        if now != before:
            raise UserError(
                f"train.csv no longer matches the split in {path} ({len(now - before)} ids added, "
                f"{len(before - now)} removed); restore the data, or delete {path} to split again"
            )
        merged = df.merge(saved[["id", "label", "fold"]], on="id", suffixes=("", "_saved"))
        changed = (merged["label"] != merged["label_saved"]).sum()
        if changed:
            raise UserError(
                f"{changed} labels in train.csv differ from the split in {path}; "
                f"delete {path} to split the relabelled data again"
            )
        df = merged.drop(columns="label_saved")
    else:
        if not create:
            raise UserError(f"no folds file {path}; run python -m src.folds first")
        classes = sorted_classes(df["label"])
        df = df.copy()
        df["fold"] = assign_folds(df, cfg.data.n_folds, cfg.data.fold_seed, bool(cfg.data.group_col))
        cols = ["id", "label", "fold"] + (["group"] if cfg.data.group_col else [])
        meta = {
            "classes": classes,
            "n_folds": cfg.data.n_folds,
            "seed": cfg.data.fold_seed,
            "group_col": cfg.data.group_col,
            "data_dir": cfg.data.dir,
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=2))
        atomic_save(path, lambda tmp: df[cols].to_csv(tmp, index=False))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(df["label"]) - set(index))
    if unknown:
        raise UserError(f"labels {unknown[:10]} are not in the class list of {path}; delete it to split again")
    df["target"] = df["label"].map(index).astype(np.int64)
    return df.reset_index(drop=True), classes, path
