"""Reviewed labels: a content-addressed file of (id, label) that replaces train.csv's labels.

A user reviews outputs/<exp>/suspect_labels.csv (src.report), fills its `reviewed_label` column
where the label is wrong, and runs `python -m src.folds --relabel FILE`. That writes the reviewed
labels to outputs/folds/relabel/<competition>_<sha8>.csv, whose name is the sha1 of its content,
and the config key `data.relabel` points at it. So the path stored in every fold's config names
the exact labels the fold trained on: folds trained on other labels differ in their config and
are refused together (resume, mixed folds), and a file edited after it was written is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.tasks import Task
from src.core.utils import UserError, atomic_write_text
from src.data.answers import check_answers

REVIEW_COL = "reviewed_label"


def read_reviewed(path: str | Path) -> pd.DataFrame:
    """(id, label) rows of a reviewed file: suspect_labels.csv with its `reviewed_label` column
    filled where a label changes (empty = keep), or any CSV with `id` and `label` columns."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--relabel {path} does not exist; give the reviewed suspect_labels.csv or an id,label CSV")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"--relabel {path} is empty (0 bytes); give the reviewed suspect_labels.csv (src.report) "
                        "with its reviewed_label column filled where a label is wrong") from None
    col = REVIEW_COL if REVIEW_COL in df.columns else "label"
    if "id" not in df.columns or col not in df.columns:
        raise UserError(f"{path} needs an 'id' column and a '{REVIEW_COL}' (or 'label') column; it has {list(df.columns)}")
    out = pd.DataFrame({"id": df["id"].str.strip(), "label": df[col].str.strip()})
    out = out[out["label"] != ""].reset_index(drop=True)
    dup = out["id"][out["id"].duplicated()].tolist()
    if dup:
        raise UserError(f"{path} gives a reviewed label twice for ids {dup[:5]}; keep one row per id")
    return out


def _require_known_ids(reviewed: pd.DataFrame, table: pd.DataFrame, source: str, fix: str) -> None:
    unknown = sorted(set(reviewed["id"]) - set(table["id"]))
    if unknown:
        raise UserError(f"{source} names {len(unknown)} ids that are not in the training table (e.g. {unknown[:5]}); "
                        + fix)


def check_reviewed_answers(reviewed: pd.DataFrame, table: pd.DataFrame, source: str | Path) -> None:
    """With data.answer_id (an `answer` column), the reviewed labels must keep one label per answer."""
    if "answer" in table:
        reviewed_labels = table["id"].map(dict(zip(reviewed["id"], reviewed["label"])))
        check_answers(table.assign(label=reviewed_labels.fillna(table["label"])), Path(source))


def check_reviewed(reviewed: pd.DataFrame, table: pd.DataFrame, task: Task, source: str | Path) -> pd.DataFrame:
    """The reviewed rows whose label differs from train.csv's; ids and labels (for a multi-label
    task each of the space-separated labels, as suspect_labels.csv shows them) must exist."""
    _require_known_ids(reviewed, table, str(source), "fix or drop those rows")
    classes = list(task.classes)
    reviewed = reviewed.assign(label=[task.canonical(lab) for lab in reviewed["label"]])
    bad = sorted({t for lab in reviewed["label"] for t in task.tags(lab)} - set(classes))
    if bad:
        raise UserError(f"{source} assigns labels {bad[:5]} that are not classes of the split ({classes[:10]}); "
                        "use an existing class name")
    now = dict(zip(table["id"], table["label"]))
    changed = reviewed[np.array([now[i] != lab for i, lab in zip(reviewed["id"], reviewed["label"])], dtype=bool)]
    return changed.sort_values("id").reset_index(drop=True)


def _content(changed: pd.DataFrame) -> str:
    return changed[["id", "label"]].to_csv(index=False, lineterminator="\n")


def write_relabel(changed: pd.DataFrame, folder: Path, competition: str) -> Path:
    """outputs/folds/relabel/<competition>_<sha8>.csv (the name is its content's sha1)."""
    text = _content(changed)
    path = Path(folder) / f"{competition}_{hashlib.sha1(text.encode()).hexdigest()[:8]}.csv"
    if not path.is_file():
        atomic_write_text(path, text)
    return path


def relabel_tag(path: str | Path) -> str:
    """The sha8 in a relabel file's name, after checking the file still holds that content."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.relabel {path} does not exist; write it with python -m src.folds --relabel FILE, "
                        "or set data.relabel=null")
    tag = path.stem.rsplit("_", 1)[-1]
    sha = hashlib.sha1(path.read_bytes()).hexdigest()[:8]
    if tag != sha:
        raise UserError(f"data.relabel {path} does not hold the labels its name records (sha1 {sha}, name {tag}): "
                        "it was edited or not written by src.folds --relabel; run python -m src.folds --relabel "
                        "on the reviewed file to write a new one")
    return tag


def apply_relabel(table: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """The training table with the labels of a relabel file (checked with relabel_tag)."""
    relabel_tag(path)
    reviewed = pd.read_csv(path, dtype=str, keep_default_na=False)
    _require_known_ids(reviewed, table, f"data.relabel {path}",
                       "it belongs to other data: set data.relabel to this competition's file or null")
    new = dict(zip(reviewed["id"], reviewed["label"]))
    out = table.copy()
    out["label"] = [new.get(i, lab) for i, lab in zip(out["id"], out["label"])]
    return out
