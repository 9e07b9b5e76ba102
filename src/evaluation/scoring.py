"""A submission file scored against a solution file, as Kaggle would: labels, ranked labels (top-k),
tags (multi-label), one probability column, or one column per class; what `python -m src.score` runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.tasks import canonical_tags, split_tags, task_of
from src.core.tasks.base import MAP_AT, note_left_out
from src.core.utils import UserError
from src.data.folds import folds_path
from src.data.tables import LABEL_READERS, label_columns, sample_id_col
from src.evaluation.metrics import compute_metric


def _class_list(cfg, solution: pd.DataFrame) -> list[str]:
    meta = folds_path(cfg).with_suffix(".json")
    if meta.is_file():
        return json.loads(meta.read_text())["classes"]
    return task_of(cfg).class_list(solution[cfg.data.label_col])


def _solution_labels(sol: pd.DataFrame, cfg, path: Path) -> pd.DataFrame:
    """The solution with its labels in data.label_col: one 0/1 column per class or label
    (data.label_cols, train.csv's columns) read as train.csv's are; other solutions as they are."""
    if not cfg.data.label_cols:
        return sol
    data = cfg.data.model_copy(update={"label_cols": label_columns(cfg.data), "group_col": None})
    missing = [c for c in data.label_cols if c not in sol.columns]
    if missing:
        raise UserError(f"solution {path} has no columns {missing[:5]} of data.label_cols; it needs train.csv's "
                        "0/1 label columns")
    return LABEL_READERS[task_of(cfg).label_form](sol, data, path)


def _ranked(values: pd.Series, classes: list[str], index: dict[str, int]) -> np.ndarray:
    """A top-k column (labels best first, space-separated) as scores that rank them so: the first
    label highest, unlisted classes lowest; MAP@k and accuracy (top-1) read it as written."""
    rows = values.str.split()
    bad = sorted({w for r in rows for w in r} - set(index))
    if bad:
        raise UserError(f"submission labels {bad[:5]} are not classes of this competition")
    scores = np.zeros((len(rows), len(classes)))
    for i, r in enumerate(rows):
        for rank, w in enumerate(dict.fromkeys(r)):
            scores[i, index[w]] = len(classes) - rank
    return scores / scores.sum(1, keepdims=True)


def _score_multilabel(sub: pd.DataFrame, sol: pd.DataFrame, cfg, classes: list[str], sub_path) -> dict[str, float]:
    """A multi-label submission: tags (scored as the 0/1 decisions they are) or one probability
    column per label, against the solution's tags."""
    task = task_of(cfg, classes)
    truth = canonical_tags(sol[cfg.data.label_col], cfg.data.label_sep)
    unseen = sorted({t for lab in truth for t in split_tags(lab)} - set(classes))
    if unseen:
        raise UserError(f"the solution holds tags {unseen[:5]} that no training image has, so no model of this split "
                        "can predict them; check data.label_sep and that the solution belongs to this competition")
    y = task.targets(truth)
    cols = [c for c in sub.columns if c != sample_id_col(cfg.data)]
    graded = _graded_subset(cols, classes)
    if graded:
        return _score_columns(sub, y, classes, graded, cfg.metric.name)
    if all(c in sub.columns for c in classes):
        probs = sub[classes].astype(float).to_numpy()
    elif len(cols) == 1:
        probs = task.targets(canonical_tags(sub[cols[0]], " "))  # raises on tags that are not labels
    else:
        raise UserError(f"the submission has neither one tags column nor one column per label (columns {cols[:6]})")
    out = {"accuracy": compute_metric("accuracy", y, probs)}
    out[cfg.metric.name] = compute_metric(cfg.metric.name, y, probs)
    return out


def score_submission(sub_path: str | Path, solution_path: str | Path, cfg) -> dict[str, float]:
    """{'accuracy': ..., <metric>: ...} of a submission file against a solution file."""
    d = cfg.data
    frames = []
    for p, what in ((Path(sub_path), "submission"), (Path(solution_path), "solution")):
        if not p.is_file():
            raise UserError(f"{what} file {p} does not exist; pass an existing path")
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
        id_col, key = sample_id_col(d), "data.answer_col" if d.answer_col else "data.id_col"
        if id_col not in df.columns:
            raise UserError(f"{p} has no id column '{id_col}'; set {key}")
        frames.append(df.set_index(id_col))
    sub, sol = frames
    sol = _solution_labels(sol, cfg, Path(solution_path))
    shared = [c for c in sol.columns if c in sub.columns]
    if d.label_col not in sol.columns and len(shared) == 1:
        # Kaggle's solution is in the submission's column (Digit Recognizer's Label for train.csv's label)
        sol = sol.rename(columns={shared[0]: d.label_col})
    if d.label_col not in sol.columns:
        raise UserError(f"solution {solution_path} has no label column '{d.label_col}'; set data.label_col")
    missing = sol.index.difference(sub.index)
    if len(missing):
        raise UserError(f"the submission lacks {len(missing)} solution ids (e.g. {list(missing[:3])}); predict every test id")
    sub = sub.loc[sol.index]
    classes = _class_list(cfg, sol)
    return SCORERS[task_of(cfg).label_form](sub, sol, cfg, classes, sub_path)


def _score_labels(sub: pd.DataFrame, sol: pd.DataFrame, cfg, classes: list[str], sub_path) -> dict[str, float]:
    """A one-label-per-image submission: labels or indices, ranked labels (top-k), the second class's
    probability (binary) or one probability column per class, against the solution's labels."""
    d = cfg.data
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(sol[d.label_col]) - set(index))
    if unknown:
        raise UserError(f"solution labels {unknown[:5]} are not in the class list {classes[:10]}")
    y = sol[d.label_col].map(index).to_numpy()
    cols = [c for c in sub.columns if c != sample_id_col(d)]
    written = None  # the labels each row writes, best first (a label or top-k file)
    graded = _graded_subset(cols, classes)
    if graded:
        return _score_columns(sub, np.eye(len(classes))[y], classes, graded, cfg.metric.name)
    if all(c in sub.columns for c in classes):
        probs = sub[classes].astype(float).to_numpy()
    elif len(cols) == 1:
        values = sub[cols[0]]
        numeric = pd.to_numeric(values, errors="coerce")
        if len(classes) == 2 and numeric.notna().all() and not set(values) <= set(index) and numeric.between(0, 1).all():
            # a binary task's single column: the probability of the second class
            p = numeric.to_numpy(dtype=float)
            probs = np.stack([1 - p, p], axis=1)
        elif (values.str.split().str.len() > 1).any():
            probs, written = _ranked(values, classes, index), values.str.split().tolist()
        else:
            labels = values
            if not set(labels) <= set(index) and set(labels) <= {str(i) for i in range(len(classes))}:
                labels = labels.map(lambda s: classes[int(s)])
            bad = sorted(set(labels) - set(index))
            if bad:
                raise UserError(f"submission labels {bad[:5]} are not classes of this competition")
            probs, written = np.eye(len(classes))[labels.map(index).to_numpy()], [[v] for v in labels]
    else:
        raise UserError(f"{sub_path} has neither one prediction column nor one column per class (columns {cols[:6]})")
    out = {"accuracy": compute_metric("accuracy", y, probs)}
    m = MAP_AT.match(cfg.metric.name)
    out[cfg.metric.name] = (written_map(written, sol[d.label_col].tolist(), int(m.group(1))) if m and written
                            else compute_metric(cfg.metric.name, y, probs))
    return out


def _graded_subset(cols: list[str], classes: list[str]) -> list[str] | None:
    """The classes a submission of probability columns for some of them holds (two or more, all
    classes), in class order; None for a submission of every class or of one column."""
    if 2 <= len(cols) < len(classes) and set(cols) <= set(classes):
        return [c for c in classes if c in cols]
    return None


def _score_columns(sub: pd.DataFrame, y01: np.ndarray, classes: list[str], graded: list[str], metric: str
                   ) -> dict[str, float]:
    """A graded subset scored column by column: the metric over its 0/1 truth columns (N, G) and
    probability columns, as Kaggle grades the columns it asks for; the left-out ones said."""
    note_left_out(graded, classes)
    idx = [classes.index(c) for c in graded]
    return {metric: compute_metric(metric, y01[:, idx], sub[graded].astype(float).to_numpy())}


def written_map(written: list[list[str]], truth: list[str], k: int) -> float:
    """MAP@k of exactly the labels each row writes, in order, as Kaggle's average_precision_at_k
    scores one true label: 1/position of its first occurrence among the row's first k labels, 0
    when it is not there (unwritten classes never count; a repeated label keeps its place). Rows
    with more than k labels are said (only their first k are scored)."""
    long = sum(len(r) > k for r in written)
    if long:
        print(f"note: {long} rows hold more than {k} labels; MAP@{k} scores the first {k} of each, as Kaggle does")
    ap = [1.0 / (r[:k].index(t) + 1) if t in r[:k] else 0.0 for r, t in zip(written, truth)]
    return float(np.mean(ap)) if ap else float("nan")


def _numbers(values: pd.Series, path, col: str) -> np.ndarray:
    parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(parsed))
    if len(bad):
        raise UserError(f"{path}: {col} '{values.iloc[bad[0]]}' of id {values.index[bad[0]]} is not a finite number "
                        f"({len(bad)} such rows); a regression file holds one number per image")
    return parsed


def _score_values(sub: pd.DataFrame, sol: pd.DataFrame, cfg, classes: list[str], sub_path) -> dict[str, float]:
    """A regression submission: the predicted number in its one column, against the solution's values."""
    d = cfg.data
    cols = [c for c in sub.columns if c != sample_id_col(d)]
    if len(cols) != 1:
        raise UserError(f"{sub_path} has {len(cols)} prediction columns ({cols[:6]}); a regression submission has one")
    y = _numbers(sol[d.label_col], d.solution, d.label_col)
    pred = _numbers(sub[cols[0]], sub_path, cols[0])[:, None]
    metrics = dict.fromkeys(task_of(cfg).summary_metrics) | {cfg.metric.name: None}
    return {m: compute_metric(m, y, pred) for m in metrics}


# Task.label_form -> the scorer of a submission against the solution's labels
SCORERS = {"one": _score_labels, "tags": _score_multilabel, "value": _score_values}
