"""Figures of the experiment report and the recipe comparison, written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from src.core.plotting import save_figure


def mean_band(histories: dict[int, pd.DataFrame], col: str) -> pd.DataFrame:
    """Per epoch: mean, std and count of `col` over the folds that ran that epoch (early stopping
    ends folds at different epochs); std is 0 where one fold remains."""
    frames = [h.set_index("epoch")[col].rename(k) for k, h in histories.items() if col in h and h[col].notna().any()]
    if not frames:
        return pd.DataFrame(columns=["epoch", "mean", "std", "n"])
    wide = pd.concat(frames, axis=1)
    return pd.DataFrame({"epoch": wide.index, "mean": wide.mean(axis=1).to_numpy(),
                         "std": wide.std(axis=1, ddof=0).fillna(0).to_numpy(), "n": wide.count(axis=1).to_numpy()})


def learning_curves(histories: dict[int, pd.DataFrame], metric: str, path: Path) -> None:
    """Train loss, validation loss and validation metric: each fold thin, their mean thick."""
    cols = [("train_loss", "train loss"), ("val_loss", "validation loss"), (f"val_{metric}", f"validation {metric}")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (col, title) in zip(axes, cols):
        for k, h in histories.items():
            if col in h:
                ax.plot(h["epoch"], h[col], lw=1, alpha=0.6, marker=".", label=f"fold {k}")
        band = mean_band(histories, col)
        if len(band):
            ax.plot(band["epoch"], band["mean"], lw=2.5, color="black", marker="o", label="mean")
        ax.set(xlabel="epoch", title=title)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def compare_curves(runs: dict[str, dict[int, pd.DataFrame]], metric: str, path: Path) -> None:
    """Validation loss and metric of several experiments: the mean over folds, a band of +-1 std."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, col in zip(axes, ("train_loss", "val_loss", f"val_{metric}")):
        for name, histories in runs.items():
            band = mean_band(histories, col)
            if not len(band):
                continue
            (line,) = ax.plot(band["epoch"], band["mean"], lw=2, marker="o", label=name)
            ax.fill_between(band["epoch"], band["mean"] - band["std"], band["mean"] + band["std"],
                            color=line.get_color(), alpha=0.2)
        ax.set(xlabel="epoch", title=col.replace("_", " ") + " (mean over folds, band +-1 std)")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _heatmap(ax, m: np.ndarray, classes: list[str], title: str, fmt: str) -> None:
    ax.imshow(m, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if len(classes) <= 30:
        hi = m.max() or 1
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > hi / 2 else "black")


def confusion_pair(counts: np.ndarray, shares: np.ndarray, classes: list[str], path: Path) -> None:
    """The OOF confusion matrix in counts and row-normalised, side by side."""
    size = min(max(5.0, 0.45 * len(classes) + 2), 30.0)  # past ~60 classes the labels stop being legible anyway
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    _heatmap(axes[0], counts, classes, f"counts ({int(counts.sum())} OOF images)", "d")
    _heatmap(axes[1], shares, classes, "row-normalised (recall on the diagonal)", ".2f")
    save_figure(fig, path)


def _grid(n: int, cols: int, cell: float = 2.2):
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.4)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def image_grid(items: list[tuple[np.ndarray, str]], path: Path, cols: int = 6) -> None:
    """Images (H, W, 3 uint8) with a title each."""
    fig, axes = _grid(len(items), cols)
    for ax, (img, title) in zip(axes, items):
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
    save_figure(fig, path)


def cam_grid(items: list[tuple[np.ndarray, np.ndarray, str]], path: Path, cols: int = 4) -> None:
    """Each image as the model saw it, and beside it its Grad-CAM map over it."""
    fig, axes = _grid(2 * len(items), 2 * cols)
    axes = list(axes)
    for i, (img, cam, title) in enumerate(items):
        axes[2 * i].imshow(img)
        axes[2 * i].set_title(title, fontsize=7)
        axes[2 * i + 1].imshow(img)
        axes[2 * i + 1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[2 * i + 1].set_title("Grad-CAM", fontsize=7)
    save_figure(fig, path)


def filter_grid(filters: np.ndarray, title: str, path: Path, cols: int = 16) -> None:
    """First-layer filters (O, kh, kw, 3 or 1), each scaled to [0, 1]."""
    fig, axes = _grid(len(filters), min(cols, len(filters)), cell=0.9)
    for ax, f in zip(axes, filters):
        ax.imshow(f if f.shape[-1] == 3 else f[..., 0], cmap=None if f.shape[-1] == 3 else "gray",
                  interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def feature_map_grid(img: np.ndarray, maps: dict[str, np.ndarray], path: Path, per_stage: int = 8) -> None:
    """The input image, then the first channels of each stage's feature map, one row per stage."""
    rows = len(maps) + 1
    fig, axes = plt.subplots(rows, per_stage, figsize=(per_stage * 1.4, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(img)
    axes[0, 0].set_title("input", fontsize=7)
    for r, (name, fmap) in enumerate(maps.items(), 1):
        for c in range(min(per_stage, len(fmap))):
            axes[r, c].imshow(fmap[c], cmap="viridis")
            axes[r, c].set_title(f"{name} [{c}] {fmap.shape[1]}x{fmap.shape[2]}", fontsize=6)
    save_figure(fig, path)
