"""Pseudo-label rows for training: a table written by src.pseudo, read and checked against the content hash in its name, and appended to a fold's training rows (never its validation rows)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.config import Config
from src.core.tasks import Task, task_of
from src.core.utils import UserError
from src.data.image_cache import cache_root
from src.data.tables import load_test_table, prob_columns


def pseudo_digest(table: bytes, meta: bytes) -> str:
    """The 8 hex digits a pseudo-label table's name ends with: the sha1 of the table's bytes and
    its .json's (which says whether its targets are soft), so anything that changes what training
    does changes the name, and an edit of either file no longer matches it."""
    return hashlib.sha1(table + b"\0" + meta).hexdigest()[:8]


def read_pseudo(path: str | Path, cfg: Config, classes: list[str]) -> tuple[pd.DataFrame, bool]:
    """(pseudo rows with id, label, path, target, and prob_<class> columns; soft?) for training."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"data.pseudo={path}: no such pseudo-label table (with its .json); write it with "
                        "python -m src.pseudo --experiments ...")
    tag, sha = path.stem.rsplit("_", 1)[-1], pseudo_digest(path.read_bytes(), meta_path.read_bytes())
    if tag != sha:
        raise UserError(f"data.pseudo={path} and its .json do not hold what its name records (sha1 {sha}, name "
                        f"{tag}): one was edited or not written by src.pseudo; write a new one with python -m src.pseudo")
    meta = json.loads(meta_path.read_text())
    if meta.get("classes") != classes:
        raise UserError(f"data.pseudo={path} was made for the classes {meta.get('classes')[:5]}..., not this "
                        "competition's; make it from this competition's members")
    df = pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)
    missing = [c for c in ["id", "label", *prob_columns(classes)] if c not in df]
    if missing:
        raise UserError(f"data.pseudo={path} lacks the columns {missing[:4]}; write it again with python -m src.pseudo")
    test, _ = load_test_table(cfg.data, cache_root(cfg))
    path_of = dict(zip(test["id"], test["path"]))
    unknown = [i for i in df["id"] if i not in path_of]
    if unknown:
        raise UserError(f"data.pseudo={path} names {len(unknown)} images that are not test images of {cfg.data.dir} "
                        f"(e.g. {unknown[:3]}); make the table from this competition's test set")
    task = task_of(cfg, classes)
    _check_rows(df, path, task)
    rows = df[["id", "label", *prob_columns(classes)]].copy()
    rows["path"] = [path_of[i] for i in rows["id"]]
    return task.with_targets(rows), bool(meta.get("soft"))  # a multi-label row's come from its tags, as real rows' do


def _check_rows(df: pd.DataFrame, path: Path, task: Task) -> None:
    """One sentence for a table src.pseudo would not have written: repeated ids, labels that are
    not classes, probabilities missing, outside [0, 1] or (one label per image) not summing to 1."""
    fix = "write it again with python -m src.pseudo"
    dup = df["id"][df["id"].duplicated()].unique().tolist()
    if dup:
        raise UserError(f"data.pseudo={path} lists ids {dup[:3]} more than once; {fix}")
    unknown = sorted({t for lab in df["label"] for t in task.tags(lab)} - set(task.classes))
    if unknown:
        raise UserError(f"data.pseudo={path} holds labels {unknown[:5]} that are not classes of this competition; {fix}")
    probs = df[prob_columns(list(task.classes))].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = task.invalid_rows(probs)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"data.pseudo={path} holds probabilities that are missing, outside [0, 1] or do not sum to 1 "
                        f"(first at row {i + 2}, id {df['id'].iloc[i]}); {fix}")


def add_pseudo(train: pd.DataFrame, cfg: Config, classes: list[str]) -> pd.DataFrame:
    """The training rows of a fold with the pseudo-labelled test images appended (fold -1,
    pseudo=True); unchanged without data.pseudo. Validation rows are never passed here."""
    if cfg.data.pseudo is None:
        return train
    rows, soft = read_pseudo(cfg.data.pseudo, cfg, classes)
    rows["fold"], rows["pseudo"], rows["pseudo_soft"] = -1, True, soft
    real = train.assign(pseudo=False, pseudo_soft=False)
    return pd.concat([real, rows], ignore_index=True)
