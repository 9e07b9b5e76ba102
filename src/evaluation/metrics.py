"""Competition metrics over class-probability matrices (scikit-learn does the arithmetic)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss, roc_auc_score

from src.core.config import Config

LOWER_IS_BETTER = {"log_loss", "loss"}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, stable for large logits."""
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def compute_metric(name: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """Score `probs` (N x C) against integer targets with the metric `name`.

    accuracy, f1_macro and qwk (quadratic-weighted kappa) use the argmax; log_loss and roc_auc
    (binary, or one-vs-rest macro for more classes) use the probabilities.
    """
    y_true = np.asarray(y_true)
    n_classes = probs.shape[1]
    pred = probs.argmax(1)
    if name == "accuracy":
        return float(accuracy_score(y_true, pred))
    if name == "f1_macro":
        return float(f1_score(y_true, pred, average="macro", labels=np.arange(n_classes), zero_division=0))
    if name == "qwk":
        return float(cohen_kappa_score(y_true, pred, weights="quadratic", labels=np.arange(n_classes)))
    if name == "log_loss":
        p = np.clip(probs, 1e-15, 1.0)
        return float(log_loss(y_true, p / p.sum(1, keepdims=True), labels=np.arange(n_classes)))
    if name == "roc_auc":
        if len(np.unique(y_true)) < 2:
            return float("nan")
        if n_classes == 2:
            return float(roc_auc_score(y_true, probs[:, 1]))
        return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=np.arange(n_classes)))
    raise ValueError(f"unknown metric {name}")


def is_better(name: str, new: float, best: float | None) -> bool:
    """True when `new` beats `best` for the metric `name` (NaN never does)."""
    if new != new:
        return False
    if best is None or best != best:
        return True
    return new < best if name in LOWER_IS_BETTER else new > best


def summary(y_true: np.ndarray, probs: np.ndarray, metric: str) -> dict[str, float]:
    """accuracy, f1_macro and the competition metric, for reports."""
    out = {m: compute_metric(m, y_true, probs) for m in ("accuracy", "f1_macro")}
    out[metric] = compute_metric(metric, y_true, probs)
    return out


def higher_is_better(cfg: Config) -> bool:
    """The direction of the monitored value (train.monitor: the metric, or the loss)."""
    return cfg.train.monitor == "metric" and cfg.metric.name not in LOWER_IS_BETTER


def monitor_name(cfg: Config) -> str:
    """The name of the value that picks the best epoch: the metric's, or loss."""
    return cfg.metric.name if cfg.train.monitor == "metric" else "loss"
