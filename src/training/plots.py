"""Training figures: loss/metric curves and the confusion matrix, written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import ConfusionMatrixDisplay, f1_score

from src.core.plotting import save_figure


def plot_curves(history: pd.DataFrame, metric: str, path: Path) -> None:
    """Train/valid loss and the validation metric per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(history["epoch"], history["train_loss"], marker="o", label="train")
    if "val_loss" in history and history["val_loss"].notna().any():
        axes[0].plot(history["epoch"], history["val_loss"], marker="o", label="valid")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    for col in dict.fromkeys(("val_accuracy", f"val_{metric}")):
        if col in history and history[col].notna().any():
            axes[1].plot(history["epoch"], history[col], marker="o", label=col.removeprefix("val_"))
    axes[1].set(xlabel="epoch", title="validation")
    if axes[1].lines:
        axes[1].legend()
    save_figure(fig, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalized confusion matrix with counts."""
    size = max(5, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=np.arange(len(classes)), display_labels=classes, ax=ax, colorbar=False,
        xticks_rotation="vertical", include_values=len(classes) <= 30,
    )
    ax.set_title("confusion matrix (best epoch, out of fold)")
    save_figure(fig, path)


def plot_residuals(y_true: np.ndarray, values: np.ndarray, target: str, path: Path) -> None:
    """Regression OOF: each image's predicted value against its target, with the diagonal."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true, values, s=8, alpha=0.5)
    lo, hi = float(min(y_true.min(), values.min())), float(max(y_true.max(), values.max()))
    ax.plot([lo, hi], [lo, hi], color="tab:red", lw=1)
    ax.set_xlabel(f"{target} (label)")
    ax.set_ylabel(f"{target} (predicted)")
    ax.set_title("predicted against label (best epoch, out of fold)")
    save_figure(fig, path)


def plot_label_scores(y_true: np.ndarray, probs: np.ndarray, labels: list[str], path: Path) -> None:
    """Multi-label OOF: each label's F1 at probability 0.5, with its count of positive images."""
    pred = probs >= 0.5
    f1 = f1_score(y_true, pred, average=None, zero_division=0)
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), f1, color="tab:blue")
    ax.set_xticks(range(len(labels)), [f"{c}\n({int(n)})" for c, n in zip(labels, y_true.sum(0))],
                  rotation=90 if len(labels) > 20 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 at 0.5")
    ax.set_title("per-label F1 (best epoch, out of fold; positives in brackets)")
    save_figure(fig, path)
