"""Blending predictions: voting rules and member weights fitted on out-of-fold predictions."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from src.core.tasks import Task
from src.core.utils import UserError, softmax
from src.evaluation.metrics import compute_metric, metric_spec


def combine(logits: np.ndarray, voting: str, weights: np.ndarray | None = None, task: Task | None = None
            ) -> np.ndarray:
    """Blend logits (K, N, C) from K predictors into probabilities (N, C) by `voting`, with weights
    (default equal), as the task blends (Task.blend: soft, geometric, logits, hard or rank over
    classes; per label for multi-label; the mean grade for ordinal, whose as_logits is the score)."""
    k = logits.shape[0]
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return (task or Task()).blend(logits, voting, w[:, None, None])


def check_voting(voting: str, metric: str) -> None:
    """One sentence where a voting rule writes something the metric cannot score as intended: rank
    voting writes rank averages (right for AUC-type metrics), not probabilities for log loss."""
    if voting == "rank" and metric == "log_loss":
        raise UserError("ensemble.voting=rank writes per-class rank averages, not probabilities, and metric.name="
                        "log_loss scores the probabilities themselves; use soft, geometric or logits voting")


def as_logits(p: np.ndarray, task: Task | None = None) -> np.ndarray:
    """Probabilities back as logits for `combine`: log-probabilities (softmax ignores per-row
    shifts), for multi-label the log-odds of each label, for ordinal the grade score (N, 1)."""
    return (task or Task()).blend_input(p)


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
