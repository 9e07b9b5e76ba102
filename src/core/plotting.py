"""Figures without a screen: matplotlib's Agg backend, and PNGs written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # servers, CI and Kaggle have no display
import matplotlib.pyplot as plt  # noqa: E402

from src.core.utils import atomic_save  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG (temp file, then rename) and close it."""
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
