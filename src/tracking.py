"""Weights & Biases tracking that can never stop a training run."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from src.config import Config


def wandb_mode(mode: str) -> str:
    """auto -> online when WANDB_API_KEY is set, else offline (no login ever needed)."""
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class Tracker:
    """One W&B run (grouped by experiment). Any tracking failure is a warning, then a no-op."""

    def __init__(self, cfg: Config, name: str, out_dir: Path, job_type: str = "train", group: str | None = None):
        self.run = None
        mode = wandb_mode(cfg.wandb.mode)
        if mode == "disabled":
            return
        try:
            import wandb

            out_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                mode=mode,
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                group=group or cfg.experiment.name,
                name=name,
                job_type=job_type,
                dir=str(out_dir),
                config=cfg.to_dict(),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        except Exception as e:  # tracking must never cost a training run
            self._fail("start", e)

    def _fail(self, what: str, e: Exception) -> None:
        warnings.warn(f"W&B {what} failed ({type(e).__name__}: {e}); continuing without tracking", stacklevel=3)
        self.run = None

    def log(self, data: dict, step: int | None = None) -> None:
        if self.run is not None:
            try:
                self.run.log(data, step=step)
            except Exception as e:
                self._fail("log", e)

    def summary(self, data: dict) -> None:
        if self.run is not None:
            try:
                self.run.summary.update(data)
            except Exception as e:
                self._fail("summary", e)

    def confusion(self, y_true, y_pred, class_names: list[str]) -> None:
        if self.run is not None:
            try:
                import wandb

                self.run.log({"confusion_matrix": wandb.plot.confusion_matrix(
                    y_true=list(map(int, y_true)), preds=list(map(int, y_pred)), class_names=class_names)})
            except Exception as e:
                self._fail("confusion matrix", e)

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                self._fail("finish", e)
            self.run = None
