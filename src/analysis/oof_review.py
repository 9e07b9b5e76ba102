"""An experiment's out-of-fold predictions, read back and examined: the CV table with every metric,
the confusion matrix with per-class precision/recall/F1, and the suspect-label list (every OOF
image by its loss). scikit-learn does the arithmetic; nothing here builds a model."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from src.core.utils import UserError
from src.data.relabel import REVIEW_COL
from src.evaluation.metrics import compute_metric
from src.runs.layout import fold_paths, oof_probs, read_oof

METRICS = ("accuracy", "f1_macro", "log_loss", "roc_auc")


def read_member_oof(exp_dir, folds: list[int], classes: list[str], records: dict[int, dict]) -> pd.DataFrame:
    """Every finished fold's oof.csv, concatenated; an id must appear once over the folds."""
    parts = [read_oof(fold_paths(exp_dir, k).oof, classes, records[k].get("run_id")) for k in folds]
    oof = pd.concat(parts, ignore_index=True)
    dup = oof["id"][oof["id"].duplicated()].unique().tolist()
    if dup:
        raise UserError(f"ids {dup[:5]} are out of fold in more than one fold of {exp_dir}; the folds come from "
                        "different splits: retrain them on one split (--fold all --force)")
    return oof


def _scores(y: np.ndarray, probs: np.ndarray, metric: str) -> dict[str, float]:
    names = METRICS + ((metric,) if metric not in METRICS else ())
    return {m: compute_metric(m, y, probs) for m in names}


def cv_table(oof: pd.DataFrame, classes: list[str], metric: str, records: dict[int, dict]) -> pd.DataFrame:
    """One row per fold and one for all OOF predictions: images, best epoch, and every metric."""
    rows = []
    for k, part in oof.groupby("fold", sort=True):
        rec = records[int(k)]
        rows.append({"fold": str(k), "images": len(part), "best_epoch": rec.get("best_epoch"),
                     "epochs_run": rec.get("epochs_run"),
                     **_scores(part["target"].to_numpy(), oof_probs(part, classes), metric)})
    rows.append({"fold": "oof", "images": len(oof), "best_epoch": None, "epochs_run": None,
                 **_scores(oof["target"].to_numpy(), oof_probs(oof, classes), metric)})
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


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each true class's row as shares (a class without images stays zero)."""
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def suspects(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Every OOF image, highest loss (-log p of its label) first: id, fold, label, predicted label,
    the predicted label's probability, the label's probability, loss, and an empty reviewed_label
    column for src.folds --relabel."""
    probs = oof_probs(oof, classes)
    y = oof["target"].to_numpy()
    pred = probs.argmax(1)
    p_label = probs[np.arange(len(y)), y]
    out = pd.DataFrame({
        "id": oof["id"].to_numpy(), "fold": oof["fold"].to_numpy(), "label": oof["label"].to_numpy(),
        "predicted": np.asarray(classes, dtype=object)[pred], "prob": probs[np.arange(len(y)), pred],
        "prob_label": p_label, "loss": -np.log(np.clip(p_label, 1e-15, 1.0)), REVIEW_COL: "",
    })
    return out.sort_values(["loss", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
