"""Competition metrics, each with its direction and the tasks it scores, in one registry.

A metric scores a probability matrix against the truth: integer class indices (N,) for
multi-class, binary and ordinal tasks, a 0/1 matrix (N, L) for multi-label ones. Metrics on
decisions decode the probabilities first (the argmax; for multi-label, the labels whose
probability reaches a threshold: 0.5, or thresholds fitted on OOF; for ordinal, the rounded grade
score, or with thresholds between grades fitted on OOF, the grade whose interval holds the score). scikit-learn does the
arithmetic wherever it has the metric; written here: MAP@k, GAP (global average precision), the
partial ROC AUC above a true-positive rate, as ISIC 2024 scored it, the ROC AUC weighted by
true-positive-rate band (ALASKA2) and the probabilistic F-beta (RSNA breast cancer).

Names: accuracy, balanced_accuracy, f<beta>_<average> (f1_macro, f1_micro, f1_weighted, f2_samples,
...; samples is per image, multi-label only, and an image with no true and no predicted label scores
1 as in Kaggle's mean F-score, or 0 with f2_samples@0 as scikit-learn's zero_division=0), roc_auc, pauc
(pauc@<min_tpr>, default 0.8; binary), average_precision, log_loss, qwk, map@<k> (map@5), gap, top1_error
(multi-class; lower is better), weighted_auc (binary; ALASKA2's bands), pfbeta (pfbeta@<beta>, default 1; binary),
rmse, mae (regression; lower is better), r2 (regression). A regression's truth is its values (N,) float
and its prediction the one column of predicted values (N, 1).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    fbeta_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)

from src.core.config import METRIC_NAMES, Config
from src.core.tasks import Task, task_for_targets
from src.data.answers import to_answers

SINGLE = frozenset({"multiclass", "binary", "ordinal"})  # one label per image: integer targets
ALL = SINGLE | {"multilabel"}
PROBABILITIES = ALL - {"ordinal"}  # an ordinal prediction is a grade score (src.core.tasks), not class probabilities
VALUES = frozenset({"regression"})  # a value per image, its one column the prediction


def decide(probs: np.ndarray, thresholds: np.ndarray | float | None = None) -> np.ndarray:
    """Decisions from probabilities: the argmax class (N,) for one label per image; with
    `thresholds` (multi-label), the 0/1 matrix of labels whose probability reaches them."""
    if thresholds is None:
        return probs.argmax(1)
    return (probs >= np.broadcast_to(np.asarray(thresholds, dtype=np.float64), probs.shape[1:])).astype(np.int64)


def decide_grades(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Ordinal decisions (N,): the grade whose interval between the K-1 ascending `thresholds`
    holds the mean grade of each row of grade distributions (N, K)."""
    th = np.asarray(thresholds, dtype=np.float64)
    if th.shape != (probs.shape[1] - 1,) or (np.diff(th) < 0).any():
        raise ValueError(f"{probs.shape[1]} grades need {probs.shape[1] - 1} ascending thresholds, not {th.tolist()}")
    return np.digitize(probs @ np.arange(probs.shape[1], dtype=np.float64), th)


def _multilabel(y: np.ndarray) -> bool:
    return y.ndim == 2


def _decisions(y: np.ndarray, probs: np.ndarray, thresholds) -> np.ndarray:
    if _multilabel(y):
        return decide(probs, 0.5 if thresholds is None else thresholds)
    return decide(probs) if thresholds is None else decide_grades(probs, thresholds)  # one label: thresholds are grades'


def _accuracy(y, probs, thresholds):
    return accuracy_score(y, _decisions(y, probs, thresholds))  # multi-label: every label of the image right


def _balanced_accuracy(y, probs, thresholds):
    return balanced_accuracy_score(y, _decisions(y, probs, thresholds))


def _fbeta(beta: float, average: str):
    def score(y, probs, thresholds):
        labels = None if _multilabel(y) else np.arange(probs.shape[1])
        return fbeta_score(y, _decisions(y, probs, thresholds), beta=beta, average=average, labels=labels,
                           zero_division=0)
    return score


def _fbeta_samples(beta: float, empty: float):
    """The mean over images of each image's F-beta of its labels; an image with no true and no
    predicted label scores `empty`: 1 (Kaggle's mean F-score, e.g. Planet's F2: nothing to find,
    nothing claimed, a perfect match) or 0 (scikit-learn's zero_division=0, metric name @0)."""
    def score(y, probs, thresholds):
        pred, true = _decisions(y, probs, thresholds).astype(bool), np.asarray(y).astype(bool)
        tp, fp, fn = (pred & true).sum(1), (pred & ~true).sum(1), (~pred & true).sum(1)
        b2 = beta * beta
        denom = (1 + b2) * tp + b2 * fn + fp  # 0 only where the image has no true and no predicted label
        return float(np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1), empty).mean())
    return score


def metric_note(name: str) -> str:
    """How a metric whose definition differs between competitions is computed here ('' for the others)."""
    m = _FBETA.match(name)
    if not m or m.group(2) != "samples":
        return ""
    return (f"{name}: an image with no true and no predicted label scores {0 if m.group(3) else 1}"
            + (" (scikit-learn's zero_division=0)" if m.group(3) else f" (Kaggle's mean F-score; {name}@0 scores it 0)"))


def _columns_with_both(y: np.ndarray) -> np.ndarray:
    return np.flatnonzero((y.min(0) == 0) & (y.max(0) == 1))


def _roc_auc(y, probs, thresholds):
    if _multilabel(y):  # mean column-wise, over the labels that have both outcomes
        cols = _columns_with_both(y)
        return float(np.mean([roc_auc_score(y[:, c], probs[:, c]) for c in cols])) if len(cols) else float("nan")
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return roc_auc_score(y, probs[:, 1])
    # One-vs-rest over the classes present: the mean of per-column AUCs, as Kaggle scores one-hot
    # columns (Plant Pathology 2020); scikit-learn's multi_class="ovr" would also demand rows summing to 1.
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in np.unique(y)]))


def partial_auc(y: np.ndarray, score: np.ndarray, min_tpr: float) -> float:
    """Area under the ROC curve where the true-positive rate is at least `min_tpr` (0 to 1 - min_tpr),
    as ISIC 2024 scored it: the negatives become the positives of a flipped problem whose
    false-positive rate then runs from 0 to 1 - min_tpr, and the area up to there is integrated with
    the curve interpolated at that rate."""
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = roc_curve(1 - np.asarray(y), -np.asarray(score, dtype=np.float64))
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x = np.append(fpr[:stop], max_fpr)
    t = np.append(tpr[:stop], np.interp(max_fpr, fpr, tpr))
    return float(np.trapezoid(t, x) if hasattr(np, "trapezoid") else np.trapz(t, x))


def _pauc(min_tpr: float):
    def score(y, probs, thresholds):
        if len(np.unique(y)) < 2:
            return float("nan")
        return partial_auc(y, probs[:, 1], min_tpr)
    return score


def weighted_auc(y: np.ndarray, score: np.ndarray, bands: tuple[float, ...] = (0.0, 0.4, 1.0),
                 weights: tuple[float, ...] = (2.0, 1.0)) -> float:
    """ROC AUC with each band of true-positive rate weighted (ALASKA2: TPR 0 to 0.4 counts twice):
    the area between the curve and FPR 1, sliced horizontally at the band edges, each slice
    weighted, the total divided by the weighted band heights (so a perfect ranking scores 1 and a
    random one 0.5, as the plain AUC)."""
    fpr, tpr, _ = roc_curve(np.asarray(y), np.asarray(score, dtype=np.float64))
    total = 0.0
    for (a, b), w in zip(zip(bands, bands[1:]), weights):
        # Each straight piece of the curve, cut to the band's TPR range: its slice of the area right
        # of the curve is a trapezoid of height t1 - t0 and mean width 1 - FPR (flat pieces add 0).
        t0, t1 = np.clip(tpr[:-1], a, b), np.clip(tpr[1:], a, b)
        rise = np.where(tpr[1:] > tpr[:-1], tpr[1:] - tpr[:-1], 1.0)
        f0 = fpr[:-1] + (fpr[1:] - fpr[:-1]) * (t0 - tpr[:-1]) / rise
        f1 = fpr[:-1] + (fpr[1:] - fpr[:-1]) * (t1 - tpr[:-1]) / rise
        total += w * float(np.sum((t1 - t0) * (1 - (f0 + f1) / 2)))
    return total / float(np.dot(np.diff(bands), weights))


def _weighted_auc(y, probs, thresholds):
    if len(np.unique(y)) < 2:
        return float("nan")
    return weighted_auc(y, probs[:, 1])


def pfbeta(y: np.ndarray, prob: np.ndarray, beta: float = 1.0) -> float:
    """Probabilistic F-beta (RSNA screening mammography): precision and recall with each
    prediction counted by its probability (clipped to [0, 1]) instead of a 0/1 decision; 0 when
    either is 0."""
    y, p = np.asarray(y).astype(bool), np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    tp, fp = p[y].sum(), p[~y].sum()
    if tp == 0 or not y.any():
        return 0.0
    precision, recall = tp / (tp + fp), tp / y.sum()
    return float((1 + beta**2) * precision * recall / (beta**2 * precision + recall))


def _pfbeta(beta: float):
    def score(y, probs, thresholds):
        return pfbeta(y, probs[:, 1], beta)
    return score


def _rmse(y, probs, thresholds):
    return float(np.sqrt(mean_squared_error(y, probs[:, 0])))


def _top1_error(y, probs, thresholds):
    return 1.0 - accuracy_score(y, decide(probs))


def _average_precision(y, probs, thresholds):
    if _multilabel(y):
        cols = _columns_with_both(y)
        return float(np.mean([average_precision_score(y[:, c], probs[:, c]) for c in cols])) if len(cols) else float("nan")
    if probs.shape[1] == 2:
        return average_precision_score(y, probs[:, 1])
    return float(np.mean([average_precision_score(y == c, probs[:, c]) for c in np.unique(y)]))


def _log_loss(y, probs, thresholds):
    if _multilabel(y):  # mean column-wise binary log loss
        p = np.clip(probs, 1e-15, 1 - 1e-15)
        return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    p = np.clip(probs, 1e-15, 1.0)
    return log_loss(y, p / p.sum(1, keepdims=True), labels=np.arange(probs.shape[1]))


def _qwk(y, probs, thresholds):
    return cohen_kappa_score(y, _decisions(y, probs, thresholds), weights="quadratic", labels=np.arange(probs.shape[1]))


def _map_at(k: int):
    def score(y, probs, thresholds):
        """Mean over images of 1/rank of the true label among the k most probable (0 beyond k)."""
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        hit = top == np.asarray(y)[:, None]
        ranks = np.where(hit.any(1), hit.argmax(1) + 1, np.inf)
        return float(np.mean(1.0 / ranks))
    return score


def _gap(y, probs, thresholds):
    """Global average precision (Landmark Recognition): one prediction per image (the argmax) with
    its probability as confidence, all images ranked by confidence, precision averaged at the hits."""
    pred, conf = probs.argmax(1), probs.max(1)
    order = np.argsort(-conf, kind="stable")
    rel = (pred[order] == np.asarray(y)[order]).astype(np.float64)
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / len(rel))


@dataclass(frozen=True)
class Metric:
    """One metric: its score function, direction and the tasks it can score."""

    name: str
    score: Callable
    higher_is_better: bool
    tasks: frozenset
    decisions: bool  # scores decoded predictions (thresholds matter), not probabilities


_FIXED = {
    "accuracy": (_accuracy, True, ALL, True),
    "balanced_accuracy": (_balanced_accuracy, True, SINGLE, True),
    "roc_auc": (_roc_auc, True, PROBABILITIES, False),
    "average_precision": (_average_precision, True, PROBABILITIES, False),
    "log_loss": (_log_loss, False, PROBABILITIES, False),
    "qwk": (_qwk, True, frozenset({"multiclass", "ordinal"}), True),
    "gap": (_gap, True, frozenset({"multiclass"}), False),
    "top1_error": (_top1_error, False, frozenset({"multiclass", "binary"}), True),
    "weighted_auc": (_weighted_auc, True, frozenset({"binary"}), False),
    "rmse": (_rmse, False, VALUES, False),
    "mae": (lambda y, probs, thresholds: float(mean_absolute_error(y, probs[:, 0])), False, VALUES, False),
    "r2": (lambda y, probs, thresholds: float(r2_score(y, probs[:, 0])), True, VALUES, False),
}
_FBETA = re.compile(r"^f(\d+(?:\.\d+)?)_(macro|micro|weighted|samples)(@0)?$")  # @0: samples only
_MAP = re.compile(r"^map@([1-9]\d*)$")
_PAUC = re.compile(r"^pauc(?:@(0?\.\d+))?$")
_PFBETA = re.compile(r"^pfbeta(?:@(\d+(?:\.\d+)?))?$")


def metric_spec(name: str) -> Metric:
    """The registry entry of a metric name; ValueError naming the choices for an unknown one."""
    if name in _FIXED:
        return Metric(name, *_FIXED[name])
    if (m := _FBETA.match(name)) and m.group(2) == "samples":
        return Metric(name, _fbeta_samples(float(m.group(1)), 0.0 if m.group(3) else 1.0), True,
                      frozenset({"multilabel"}), True)
    if m and not m.group(3):
        return Metric(name, _fbeta(float(m.group(1)), m.group(2)), True, ALL, True)
    if m := _MAP.match(name):
        return Metric(name, _map_at(int(m.group(1))), True, frozenset({"multiclass"}), False)
    if m := _PAUC.match(name):
        return Metric(name, _pauc(float(m.group(1) or 0.8)), True, frozenset({"binary"}), False)
    if m := _PFBETA.match(name):
        return Metric(name, _pfbeta(float(m.group(1) or 1.0)), True, frozenset({"binary"}), False)
    if name == "loss":
        return Metric(name, None, False, ALL, False)
    raise ValueError(f"unknown metric {name}; the metrics are {METRIC_NAMES}")


def check_metric_fits(name: str, n_classes: int, task: Task) -> None:
    """One sentence, before anything is trained or written, when a metric cannot score this task
    (a kind-only task will do): a per-image F-beta on single-label images, a binary partial AUC over
    more than two classes, a metric on class probabilities for ordinal grades."""
    if name != "loss":
        task.check_metric(name, metric_spec(name).tasks, n_classes)


def compute_metric(name: str, y_true: np.ndarray, probs: np.ndarray, thresholds=None) -> float:
    """Score `probs` (N x C class probabilities, or N x L label probabilities) against `y_true`
    (N integer classes, or an N x L 0/1 matrix) with the metric `name`; multi-label decisions use
    `thresholds` (one, or one per label; default 0.5), ordinal ones the K-1 thresholds between
    grades (default: rounding)."""
    y_true = np.asarray(y_true)
    check_metric_fits(name, np.shape(probs)[1], task_for_targets(y_true))
    return float(metric_spec(name).score(y_true, np.asarray(probs, dtype=np.float64), thresholds))


def is_better(name: str, new: float, best: float | None) -> bool:
    """True when `new` beats `best` for the metric `name` (NaN never does)."""
    if new != new:
        return False
    if best is None or best != best:
        return True
    return new > best if metric_spec(name).higher_is_better else new < best


def summary(y_true: np.ndarray, probs: np.ndarray, metric: str) -> dict[str, float]:
    """accuracy, f1_macro (regression: rmse, mae) and the competition metric, for reports."""
    out = {m: compute_metric(m, y_true, probs) for m in task_for_targets(y_true).summary_metrics}
    out[metric] = compute_metric(metric, y_true, probs)
    return out


def table_summary(table, probs: np.ndarray, task: Task, metric: str, how: str) -> dict[str, float]:
    """summary of image rows (a table with label and, with data.answer_id, answer) scored as what Kaggle
    scores: one row per answer, its images' predictions combined by data.aggregate (`how`)."""
    table, probs = to_answers(table, probs, task, how)
    return summary(task.targets(table["label"]), probs, metric)


def higher_is_better(cfg: Config) -> bool:
    """The direction of the monitored value (train.monitor: the metric, or the loss)."""
    return cfg.train.monitor == "metric" and metric_spec(cfg.metric.name).higher_is_better


def monitor_name(cfg: Config) -> str:
    """The name of the value that picks the best epoch: the metric's, or loss."""
    return cfg.metric.name if cfg.train.monitor == "metric" else "loss"
