"""Losses: cross-entropy with label smoothing (torch), focal loss, class weights; for multi-label
tasks binary cross-entropy per label (optionally focal) and timm's asymmetric loss; for ordinal
tasks with a regression head, the mean squared error or smooth L1 of the grade (torch)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from src.core.config import LossCfg
from src.core.tasks import Task
from src.core.utils import UserError


class FocalLoss(torch.nn.Module):
    """Multi-class focal loss, -sum_c alpha_c t_c (1 - p_c)^gamma log p_c, averaged over the batch.

    Targets may be class indices (smoothed by `smoothing`) or probability rows (mixup/cutmix).
    With gamma=0, no alpha and no weights it equals torch's cross-entropy with the same smoothing.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.smoothing = smoothing
        self.register_buffer("alpha", alpha if alpha is not None else torch.tensor([]), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)  # (N, C)
        n_classes = logits.shape[1]
        if target.ndim == 1:
            target = F.one_hot(target, n_classes).float() * (1.0 - self.smoothing) + self.smoothing / n_classes
        loss = -target * (1.0 - logp.exp()).pow(self.gamma) * logp
        if self.alpha.numel():
            loss = loss * self.alpha
        return loss.sum(1).mean()


class MultiLabelLoss(torch.nn.Module):
    """Binary cross-entropy with logits per label (torch), averaged over images and labels; with
    gamma > 0 each term is scaled by (1 - p_t)^gamma (focal). Smoothing moves every 0/1 target
    toward 0.5; pos_weight scales the positive term of each label."""

    def __init__(self, gamma: float = 0.0, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma, self.smoothing = gamma, smoothing
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        t = target.float() * (1.0 - self.smoothing) + 0.5 * self.smoothing
        loss = F.binary_cross_entropy_with_logits(z, t, pos_weight=self.pos_weight, reduction="none")
        if self.gamma:
            p = torch.sigmoid(z)
            loss = loss * (1.0 - (p * t + (1.0 - p) * (1.0 - t))).pow(self.gamma)
        return loss.mean()


class GradeRegressionLoss(torch.nn.Module):
    """A one-output head's score against the grade (class index, or a mixed grade under mixup):
    torch's mean squared error, or smooth L1 (Huber with beta 1)."""

    def __init__(self, name: str):
        super().__init__()
        self.loss_name = name

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score, grade = output.float().reshape(-1), target.float().reshape(-1)
        if self.loss_name == "mse":
            return F.mse_loss(score, grade)
        return F.smooth_l1_loss(score, grade, beta=1.0)


class ValueLoss(torch.nn.Module):
    """A regression head's output against the value (mixed values under mixup): mse or smooth_l1 on the
    value, or bce: binary cross-entropy of the output as a logit against the value scaled to [0, 1]
    by the target range (Task.scale)."""

    def __init__(self, name: str, task: Task):
        super().__init__()
        self.loss_name, self.task = name, task

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z, y = output.float().reshape(-1), target.float().reshape(-1)
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(z, self.task.scale(y))
        return F.mse_loss(z, y) if self.loss_name == "mse" else F.smooth_l1_loss(z, y, beta=1.0)


def _value_loss(cfg: LossCfg, task: Task, eps: float) -> torch.nn.Module:
    unused = [k for k, on in (("loss.smoothing", eps > 0), ("loss.alpha", cfg.alpha is not None),
                              ("loss.class_weights", cfg.class_weights is not None)) if on]
    if unused:
        raise UserError(f"{', '.join(unused)} weigh or smooth classes, and a regression task has none; set them to "
                        "0/null")
    return ValueLoss(cfg.name, task)


def _regression_loss(cfg: LossCfg, eps: float) -> torch.nn.Module:
    unused = [k for k, on in (("loss.smoothing", eps > 0), ("loss.alpha", cfg.alpha is not None),
                              ("loss.class_weights", cfg.class_weights is not None)) if on]
    if unused:
        raise UserError(f"{', '.join(unused)} weigh or smooth classes, and loss.name={cfg.name} regresses the grade; "
                        "set them to 0/null, or use loss.name=ce for a softmax over the grades")
    return GradeRegressionLoss(cfg.name)


def positive_weights(cfg: LossCfg, targets: np.ndarray) -> torch.Tensor | None:
    """Per-label weights of the positive term: None, 'balanced' (negatives / positives of each
    label) or the given list."""
    if cfg.class_weights is None:
        return None
    n_labels = targets.shape[1]
    if cfg.class_weights == "balanced":
        pos = targets.sum(0)
        return torch.tensor((len(targets) - pos) / np.maximum(pos, 1), dtype=torch.float32)
    if len(cfg.class_weights) != n_labels:
        raise UserError(f"loss.class_weights has {len(cfg.class_weights)} values for {n_labels} labels; give one per label")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def _multilabel_loss(cfg: LossCfg, targets: np.ndarray, eps: float) -> torch.nn.Module:
    if cfg.alpha is not None:
        raise UserError("loss.alpha weighs the classes of a multi-class focal loss; for multi-label tasks weigh the "
                        "labels with loss.class_weights (balanced, or one weight per label)")
    pos_weight = positive_weights(cfg, targets)
    if cfg.name == "asl":
        from timm.loss import AsymmetricLossMultiLabel

        return AsymmetricLossMultiLabel(smoothing=eps, reduction="mean", pos_weight=pos_weight)
    return MultiLabelLoss(cfg.gamma if cfg.name == "focal" else 0.0, eps, pos_weight)


def class_weights(cfg: LossCfg, targets: np.ndarray, n_classes: int) -> torch.Tensor | None:
    """Per-class loss weights: None, 'balanced' (n / (C * count_c)) or the given list."""
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":
        counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
        return torch.tensor(len(targets) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
    if len(cfg.class_weights) != n_classes:
        raise UserError(f"loss.class_weights has {len(cfg.class_weights)} values for {n_classes} classes; give one per class")
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def _softmax_loss(cfg: LossCfg, task: Task, targets: np.ndarray, eps: float) -> torch.nn.Module:
    n_classes = len(task.classes)
    if cfg.name == "asl":
        raise UserError("loss.name=asl is the asymmetric loss of multi-label tasks; use ce or focal here")
    weight = class_weights(cfg, targets, n_classes)
    if cfg.name == "ce":
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=eps)
    alpha = None
    if cfg.alpha is not None:
        if len(cfg.alpha) != n_classes:
            raise UserError(f"loss.alpha has {len(cfg.alpha)} values for {n_classes} classes; give one per class")
        alpha = torch.tensor(cfg.alpha, dtype=torch.float32)
    if weight is not None:
        alpha = weight if alpha is None else alpha * weight
    return FocalLoss(cfg.gamma, alpha, eps)


# Task.head -> the criterion of (loss section, task, training targets, label smoothing): a softmax over
# the classes (ce, focal), a sigmoid per label (ce is binary cross-entropy, focal its focal form, asl
# timm's asymmetric loss), a one-output score (mse, smooth_l1; the config's smoothing must be 0), or
# a regression's value (mse, smooth_l1, bce on the scaled value)
LOSSES = {
    "softmax": _softmax_loss,
    "sigmoid": lambda cfg, task, targets, eps: _multilabel_loss(cfg, targets, eps),
    "score": lambda cfg, task, targets, eps: _regression_loss(cfg, cfg.smoothing),
    "value": lambda cfg, task, targets, eps: _value_loss(cfg, task, cfg.smoothing),
}


def build_loss(cfg: LossCfg, task: Task, targets: np.ndarray, smoothing: float | None = None) -> torch.nn.Module:
    """The training criterion of the task's head.

    Args:
        cfg: loss section (name, smoothing, gamma, alpha, class_weights).
        task: the task (its head and classes).
        targets: training targets (class indices, or a 0/1 matrix for multi-label), for balanced weights.
        smoothing: override cfg.smoothing (0 when mixup already smooths the targets).
    """
    return LOSSES[task.head](cfg, task, targets, cfg.smoothing if smoothing is None else smoothing)
