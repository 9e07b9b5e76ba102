"""An experiment's out-of-fold predictions, read back and examined: the CV table with every metric
of its task, the confusion matrix with per-class precision/recall/F1 (for multi-label tasks, a
per-label table of support, AUC, the threshold fitted on OOF and the F1 there), and the
suspect-label list (every OOF image by its loss: -log p of its label; the mean binary
cross-entropy over the labels; an ordinal grade's or a value's absolute error), and for regression
the errors by range of the label. scikit-learn does the
arithmetic; nothing here builds a model."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from src.core.tasks import Task
from src.core.utils import UserError
from src.data.answers import to_answers
from src.data.relabel import REVIEW_COL
from src.evaluation.decoding import fit_thresholds
from src.evaluation.metrics import compute_metric
from src.runs.layout import fold_paths, oof_probs, read_oof


def read_member_oof(exp_dir, folds: list[int], classes: list[str], records: dict[int, dict]) -> pd.DataFrame:
    """Every finished fold's oof.csv, concatenated; an id must appear once over the folds."""
    parts = [read_oof(fold_paths(exp_dir, k).oof, classes, records[k].get("run_id")) for k in folds]
    oof = pd.concat(parts, ignore_index=True)
    dup = oof["id"][oof["id"].duplicated()].unique().tolist()
    if dup:
        raise UserError(f"ids {dup[:5]} are out of fold in more than one fold of {exp_dir}; the folds come from "
                        "different splits: retrain them on one split (--fold all --force)")
    return oof


def _scores(task: Task, part: pd.DataFrame, metric: str, how: str) -> dict[str, float]:
    """Every metric of the task on the rows' answers (data.answer_id; `how` data.aggregate), as Kaggle scores them."""
    base = task.report_metrics
    part, probs = to_answers(part, oof_probs(part, list(task.classes)), task, how)
    y = task.targets(part["label"])
    return {m: compute_metric(m, y, probs) for m in base + ((metric,) if metric not in base else ())}


def cv_table(oof: pd.DataFrame, task: Task, metric: str, records: dict[int, dict], how: str) -> pd.DataFrame:
    """One row per fold and one for all OOF predictions: images, best epoch, and every metric of the task
    (scored on answers with data.answer_id, their images combined by `how`)."""
    rows = []
    for k, part in oof.groupby("fold", sort=True):
        rec = records[int(k)]
        rows.append({"fold": str(k), "images": len(part), "best_epoch": rec.get("best_epoch"),
                     "epochs_run": rec.get("epochs_run"), **_scores(task, part, metric, how)})
    rows.append({"fold": "oof", "images": len(oof), "best_epoch": None, "epochs_run": None,
                 **_scores(task, oof, metric, how)})
    table = pd.DataFrame(rows)
    return table.astype({"best_epoch": "Int64", "epochs_run": "Int64"})


def confusion(oof: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(counts (true x predicted), per-class precision, recall, F1 and support)."""
    y, pred = oof["target"].to_numpy(), oof_probs(oof, classes).argmax(1)
    labels = np.arange(len(classes))
    counts = confusion_matrix(y, pred, labels=labels)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class = pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s})
    return counts, per_class


def label_table(oof: pd.DataFrame, task: Task, metric: str, mode: str | float) -> pd.DataFrame:
    """Multi-label OOF, one row per label: positive images, ROC AUC, the threshold fitted on OOF to
    the metric (ensemble.threshold's mode, as src.ensemble fits it) and precision, recall and F1 there."""
    classes = list(task.classes)
    y, probs = task.targets(oof["label"]), oof_probs(oof, classes)
    th = fit_thresholds(metric, y, probs, mode)
    pred = (probs >= th).astype(int)
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    auc = [roc_auc_score(y[:, j], probs[:, j]) if 0 < y[:, j].sum() < len(y) else np.nan for j in range(len(classes))]
    return pd.DataFrame({"label": classes, "support": s, "roc_auc": auc, "threshold": th, "precision": p,
                         "recall": r, "f1": f})


def residual_table(oof: pd.DataFrame, task: Task, bins: int = 5) -> pd.DataFrame:
    """Regression OOF by range of the label (up to `bins` quantile bins): images, the mean label and
    prediction (a bias shows as their gap), the mean absolute and the root mean squared error."""
    y, pred = task.targets(oof["label"]).astype(np.float64), oof_probs(oof, list(task.classes))[:, 0]
    ranges = pd.qcut(y, min(bins, len(np.unique(y))), duplicates="drop")
    err = pd.DataFrame({"range": ranges, "label": y, "predicted": pred, "abs": np.abs(pred - y), "sq": (pred - y) ** 2})
    table = err.groupby("range", observed=True).agg(images=("label", "size"), mean_label=("label", "mean"),
                                                     mean_predicted=("predicted", "mean"), mae=("abs", "mean"),
                                                     rmse=("sq", "mean"))
    return table.assign(rmse=np.sqrt(table["rmse"])).reset_index().astype({"range": str})


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each true class's row as shares (a class without images stays zero)."""
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def suspects(oof: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Every OOF image, highest loss first: id, fold, label, predicted label, ..., loss, and an
    empty reviewed_label column for src.folds --relabel. One label per image: the predicted
    label's probability, the label's, and -log p of the label; multi-label: the labels at 0.5 and
    the mean binary cross-entropy over the labels; ordinal: the grade score, the rounded grade and
    the score's distance from the label."""
    classes = list(task.classes)
    probs, y = oof_probs(oof, classes), task.targets(oof["label"])
    out = {"id": oof["id"].to_numpy(), "fold": oof["fold"].to_numpy(), "label": oof["label"].to_numpy()}
    out |= task.review(probs, y)
    out = pd.DataFrame(out | {REVIEW_COL: ""})
    return out.sort_values(["loss", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
