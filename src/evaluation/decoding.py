"""Decisions from multi-label probabilities and ordinal grade scores: thresholds fitted on OOF
predictions only, never on the test set.

Multi-label: a label is predicted when its probability reaches its threshold; with min_labels=1 an
image with none gets its most probable label. Thresholds are chosen to the competition metric on
the OOF blend (one for every label, or one each), from a grid of 0.05 steps.

Open-set top-k (Humpback Whale's new_whale, ensemble.new_label): the label of unseen individuals is
trained as a class, but ranked by a threshold instead of its own probability: it enters each row's
k labels where the row's other labels' probabilities fall below the threshold, the one of a grid
that maximises MAP@k on the OOF blend.

Ordinal: the K-1 thresholds between grades (the "optimized rounder" of APTOS solutions) start at
rounding (0.5, 1.5, ...) and move one at a time, in steps of 0.025 between their neighbours, while
the metric improves on the OOF blend; a grade's interval then holds the scores decided as it.
"""

from __future__ import annotations

import numpy as np

from src.core.tasks import Task
from src.core.utils import UserError
from src.evaluation.metrics import compute_metric, decide_grades, metric_spec

GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def decide_labels(probs: np.ndarray, thresholds: np.ndarray, min_labels: int = 0) -> np.ndarray:
    """0/1 decisions (N, L): probability >= threshold; with min_labels=1 a row without any label
    gets its most probable one."""
    out = (probs >= np.broadcast_to(thresholds, probs.shape[1:])).astype(np.int64)
    if min_labels:
        empty = out.sum(1) == 0
        out[np.flatnonzero(empty), probs[empty].argmax(1)] = 1
    return out


def score_decisions(metric: str, y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, min_labels: int) -> float:
    """The metric of what a submission with these thresholds holds: the decisions for metrics on
    decisions, the probabilities for the others (AUC, log loss)."""
    if not metric_spec(metric).decisions:
        return compute_metric(metric, y, probs)
    return compute_metric(metric, y, decide_labels(probs, thresholds, min_labels).astype(np.float64), 0.5)


def fit_thresholds(metric: str, y: np.ndarray, probs: np.ndarray, mode: str | float, min_labels: int = 0
                   ) -> np.ndarray:
    """Thresholds (L,) chosen on OOF `probs` against `y` (N, L): a fixed number, the best single
    value for every label ('global'), or from there one per label by coordinate ascent
    ('per_label', two passes over the labels). Metrics on probabilities keep 0.5 (or the number)."""
    n = probs.shape[1]
    if not isinstance(mode, str) or not metric_spec(metric).decisions:
        return np.full(n, 0.5 if isinstance(mode, str) else float(mode))
    sign = 1.0 if metric_spec(metric).higher_is_better else -1.0

    def value(th: np.ndarray) -> float:
        return sign * score_decisions(metric, y, probs, th, min_labels)

    th = max((np.full(n, t) for t in GRID), key=value)
    if mode == "per_label":
        for _ in range(2):
            for j in range(n):
                best, best_t = value(th), th[j]
                for t in GRID:
                    trial = th.copy()
                    trial[j] = t
                    if value(trial) > best:
                        best, best_t = value(trial), t
                th[j] = best_t
    return th


def rounding_thresholds(n_grades: int) -> np.ndarray:
    """The thresholds between grades that round the score: 0.5, 1.5, ..., n_grades - 1.5."""
    return np.arange(n_grades - 1, dtype=np.float64) + 0.5


def fit_grade_thresholds(metric: str, y: np.ndarray, probs: np.ndarray, passes: int = 3, step: float = 0.025
                         ) -> np.ndarray:
    """Ascending thresholds (K-1,) between the grades of ordinal OOF predictions (grade
    distributions N x K, src.core.task) against the grades `y` (N,), by coordinate ascent from
    rounding; a move is kept only when it raises the metric, so the OOF score never falls below
    rounding's."""
    k = probs.shape[1]
    th = rounding_thresholds(k)
    if not metric_spec(metric).decisions:
        return th
    sign = 1.0 if metric_spec(metric).higher_is_better else -1.0
    score = probs @ np.arange(k, dtype=np.float64)
    one_hot = np.eye(k)

    def value(t: np.ndarray) -> float:
        return sign * compute_metric(metric, y, one_hot[np.digitize(score, t)])

    best = value(th)
    for _ in range(passes):
        moved = False
        for j in range(k - 1):
            lo = th[j - 1] if j else 0.0
            hi = th[j + 1] if j < k - 2 else k - 1.0
            for t in np.round(np.arange(lo + step, hi - 1e-9, step), 6):
                trial = th.copy()
                trial[j] = t
                v = value(trial)
                if v > best + 1e-12:
                    best, th, moved = v, trial, True
        if not moved:
            break
    return th


def _fit_labels(metric: str, y: np.ndarray, probs: np.ndarray, ens) -> np.ndarray:
    return fit_thresholds(metric, y, probs, ens.threshold, ens.min_labels)


def _fit_grades(metric: str, y: np.ndarray, probs: np.ndarray, ens) -> np.ndarray:
    if not isinstance(ens.threshold, str):
        raise UserError(f"ensemble.threshold={ens.threshold} is a multi-label probability; an ordinal blend fits its "
                        "thresholds between grades on OOF (ensemble.threshold=per_label)")
    return fit_grade_thresholds(metric, y, probs)


# Task.decision -> (fit on OOF: thresholds from (metric, y, probs, ensemble section), or None where the
# argmax decides; decide: the submission's decisions from (probs, thresholds, min_labels))
DECISIONS = {
    "argmax": (lambda metric, y, probs, ens: None, lambda probs, th, min_labels: None),
    "labels": (_fit_labels, decide_labels),
    "grades": (_fit_grades, lambda probs, th, min_labels: decide_grades(probs, th)),
    "value": (lambda metric, y, probs, ens: None, lambda probs, th, min_labels: None),  # regression: the value itself
}


def fit_decisions(task: Task, metric: str, y: np.ndarray, probs: np.ndarray, ens) -> np.ndarray | None:
    """The task's decision thresholds fitted on OOF `probs` (never on test predictions): one per
    multi-label label, the K-1 between ordinal grades; None where the argmax decides."""
    return DECISIONS[task.decision][0](metric, y, probs, ens)


def decide(probs: np.ndarray, thresholds: np.ndarray | None, min_labels: int, task: Task) -> np.ndarray | None:
    """A submission's decisions: grade indices (N,) for an ordinal task, 0/1 labels (N, L) for a
    multi-label one; None where the argmax decides (no thresholds)."""
    return None if thresholds is None else DECISIONS[task.decision][1](probs, thresholds, min_labels)


NEW_LABEL_GRID = np.round(np.arange(0.0, 1.0001, 0.01), 2)  # 0: never inserted (no probability is below it)


def rank_with_new_label(probs: np.ndarray, k: int, new: int | None = None, threshold: float | None = None
                        ) -> np.ndarray:
    """Each row's k labels best first, as class indices (N, k): the k most probable or, with `new`
    (a class index) and `threshold`, the other classes by probability with `new` inserted before the
    first whose probability is below the threshold (left out when the k are all at or above it)."""
    if new is None or threshold is None:
        return np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the class first in order
    known = np.where(np.arange(probs.shape[1]) == new, -np.inf, probs)
    order = np.argsort(-known, axis=1, kind="stable")[:, :k]  # (N, k) the known classes, best first
    pos = (np.take_along_axis(probs, order, 1) >= threshold).sum(1, keepdims=True)  # (N, 1) where `new` enters
    cols = np.arange(k)[None, :]
    before = np.take_along_axis(order, np.minimum(cols, k - 1), 1)
    after = np.take_along_axis(order, np.maximum(cols - 1, 0), 1)
    return np.where(cols < pos, before, np.where(cols == pos, new, after))


def ranked_map(ranked: np.ndarray, y: np.ndarray) -> float:
    """MAP@k of ranked class indices (N, k) against one true class per row (N,): 1/position of the
    true class among the row's k, 0 when absent (Kaggle's MAP@k with one true label)."""
    hits = ranked == np.asarray(y)[:, None]
    return float(np.where(hits.any(1), 1.0 / (hits.argmax(1) + 1), 0.0).mean())


def fit_new_label(probs: np.ndarray, y: np.ndarray, k: int, new: int) -> tuple[float, float, float]:
    """(threshold, OOF MAP@k with it, OOF MAP@k of the plain top k) on OOF `probs` (N, C) against
    `y` (N,), the threshold the grid's best (the lowest of ties)."""
    scores = [ranked_map(rank_with_new_label(probs, k, new, t), y) for t in NEW_LABEL_GRID]
    best = int(np.argmax(scores))
    return float(NEW_LABEL_GRID[best]), scores[best], ranked_map(rank_with_new_label(probs, k), y)
