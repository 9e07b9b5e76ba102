"""Blending predictions: voting rules and member weights fitted on out-of-fold predictions."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import rankdata

from src.core.task import Task, expected_grade, grade_probs, grade_scores
from src.core.utils import UserError, softmax
from src.evaluation.metrics import compute_metric, metric_spec

MULTILABEL_VOTING = ("soft", "logits", "rank")
ORDINAL_VOTING = ("soft", "logits")


def _combine_multilabel(logits: np.ndarray, voting: str, w: np.ndarray, task: Task) -> np.ndarray:
    """Per-label blend of sigmoid outputs: soft (mean probability), logits (sigmoid of the mean
    logit) or rank (each label's probabilities ranked over the images, 0..1, averaged)."""
    if voting == "soft":
        return (w * expit(logits)).sum(0)
    if voting == "logits":
        return expit((w * logits).sum(0))
    if voting == "rank":
        return (w * (rankdata(logits, axis=1) - 1.0) / max(logits.shape[1] - 1, 1)).sum(0)
    raise UserError(f"ensemble.voting={voting} does not apply to multi-label predictions (a sigmoid per label); "
                    f"use one of {', '.join(MULTILABEL_VOTING)}")


def _combine_grades(logits: np.ndarray, voting: str, w: np.ndarray, task: Task) -> np.ndarray:
    """Ordinal blend: the weighted mean of the predictors' grade scores (a regression output, or
    the expected grade of a softmax), as a grade distribution (Task.activate)."""
    if voting not in ORDINAL_VOTING:
        raise UserError(f"ensemble.voting={voting} does not apply to ordinal predictions (a grade score per image); "
                        "use soft (the mean grade)")
    return grade_probs((w[:, :, 0] * grade_scores(logits)).sum(0), len(task.classes))


def combine(logits: np.ndarray, voting: str, weights: np.ndarray | None = None, task: Task | None = None
            ) -> np.ndarray:
    """Blend logits (K, N, C) from K predictors into probabilities (N, C); for a multi-label
    `task`, a sigmoid per label (soft, logits or rank voting, per label); for an ordinal one, the
    mean grade (as_logits gives a grade distribution back as its score, C = 1).

    soft: weighted mean of probabilities; geometric: of log-probabilities, renormalized;
    logits: softmax of the weighted mean logit; hard: weighted share of argmax votes; rank: each
    predictor's probabilities turned into per-class ranks over the N images (scaled to 0..1),
    weighted mean, rows renormalized to sum 1 (for two classes this is exactly the rank average
    of the second class, what AUC-type metrics score; the argmax of ranks is not the argmax of
    probabilities, so it is no rule for accuracy-type metrics).
    """
    k = logits.shape[0]
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    task = task or Task()
    return COMBINE[task.space](logits, voting, w[:, None, None], task)


def _combine_classes(logits: np.ndarray, voting: str, w: np.ndarray, task: Task) -> np.ndarray:
    """Single-label blend of softmax outputs by `voting` (see combine)."""
    if voting == "soft":
        return (w * softmax(logits)).sum(0)
    if voting == "geometric":
        return softmax((w * np.log(np.clip(softmax(logits), 1e-12, 1.0))).sum(0))
    if voting == "logits":
        return softmax((w * logits).sum(0))
    if voting == "hard":
        votes = np.eye(logits.shape[2])[logits.argmax(2)]  # (K, N, C)
        return (w * votes).sum(0)
    if voting == "rank":
        n = logits.shape[1]
        ranks = (rankdata(softmax(logits), axis=1) - 1.0) / max(n - 1, 1)  # (K, N, C), ties averaged
        score = (w * ranks).sum(0) + 1e-9  # a row ranked last in every class keeps a defined share
        return score / score.sum(1, keepdims=True)
    raise ValueError(voting)


# Task.space -> how K predictors' logits (K, N, C) blend into probabilities (N, C) with weights (K, 1, 1)
COMBINE = {"classes": _combine_classes, "labels": _combine_multilabel, "grades": _combine_grades}


def check_voting(voting: str, metric: str) -> None:
    """One sentence where a voting rule writes something the metric cannot score as intended: rank
    voting writes rank averages (right for AUC-type metrics), not probabilities for log loss."""
    if voting == "rank" and metric == "log_loss":
        raise UserError("ensemble.voting=rank writes per-class rank averages, not probabilities, and metric.name="
                        "log_loss scores the probabilities themselves; use soft, geometric or logits voting")


def log_probs(p: np.ndarray) -> np.ndarray:
    """Log-probabilities, clipped: they stand in for logits (per-row shifts cancel in softmax)."""
    return np.log(np.clip(p, 1e-12, 1.0))


def as_logits(p: np.ndarray, task: Task | None = None) -> np.ndarray:
    """Probabilities back as logits for `combine`: log-probabilities (softmax ignores per-row
    shifts), for multi-label the log-odds of each label, for ordinal the grade score (N, 1)."""
    return AS_LOGITS[(task or Task()).space](p)


def _label_log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    return np.log(q) - np.log1p(-q)


# Task.space -> probabilities (N, C) back as what combine blends: log-probabilities, each label's
# log-odds, or the grade score (N, 1)
AS_LOGITS = {"classes": log_probs, "labels": _label_log_odds, "grades": lambda p: expected_grade(p)[:, None]}


def fit_weights(oof_probs: list[np.ndarray], y: np.ndarray, metric: str, voting: str, task: Task | None = None
                ) -> np.ndarray:
    """Member weights that maximize the metric on OOF predictions (never worse than equal).

    Nelder-Mead over softmax-parametrized weights, started from equal weights; equal weights and
    each single member are candidates too, so the result is at least as good as equal on OOF.
    """
    k = len(oof_probs)
    stack = np.stack([as_logits(p, task) for p in oof_probs])
    sign = -1.0 if metric_spec(metric).higher_is_better else 1.0

    def loss(w: np.ndarray) -> float:
        return sign * compute_metric(metric, y, combine(stack, voting, w, task))

    candidates = [np.full(k, 1.0 / k)] + [np.eye(k)[i] for i in range(k)]
    if k > 1:
        res = minimize(lambda t: loss(softmax(t)), np.zeros(k), method="Nelder-Mead",
                       options={"maxiter": 200 * k, "xatol": 1e-4, "fatol": 1e-7})
        candidates.append(softmax(res.x))
    return min(candidates, key=loss)
