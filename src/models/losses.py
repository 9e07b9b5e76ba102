"""Losses: cross-entropy with label smoothing (torch), focal loss, class weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from src.core.config import LossCfg
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


def build_loss(cfg: LossCfg, n_classes: int, targets: np.ndarray, smoothing: float | None = None) -> torch.nn.Module:
    """The training criterion.

    Args:
        cfg: loss section (name, smoothing, gamma, alpha, class_weights).
        n_classes: number of classes.
        targets: training targets, for balanced class weights.
        smoothing: override cfg.smoothing (0 when mixup already smooths the targets).
    """
    eps = cfg.smoothing if smoothing is None else smoothing
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
