"""Weights & Biases tracking that can never stop a training run.

The outermost command owns the runs: `src.train` opens one per fold, `src.tune` one for the
study (open for the whole study) and one per trial fold, and passes them down. Runs are created
with reinit="create_new", so a fold's run never closes the study's.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from src.core.config import Config


def wandb_mode(mode: str) -> str:
    """auto -> online when WANDB_API_KEY is set, else offline (no login ever needed)."""
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class Tracker:
    """One W&B run, or nothing (`Tracker.off()`). Any tracking failure is a warning, then a no-op."""

    def __init__(self, run=None, opener=None):
        self._run, self._opener = run, opener

    @property
    def run(self):
        """The W&B run, opened at its first use: a command that stops in its start checks (a bad
        path, offline weights) leaves no run behind."""
        if self._run is None and self._opener is not None:
            opener, self._opener = self._opener, None
            try:
                self._run = opener()
            except Exception as e:  # tracking must never cost a training run
                self._fail("start", e)
        return self._run

    @run.setter
    def run(self, value) -> None:
        self._run = value

    @classmethod
    def off(cls) -> Tracker:
        return cls(None)

    @classmethod
    def start(cls, cfg: Config, name: str, out_dir: Path, job_type: str = "train", group: str | None = None) -> Tracker:
        """A run named `name` in `group` (default: the experiment), files under out_dir/wandb,
        opened when something is first logged."""
        mode = wandb_mode(cfg.wandb.mode)
        if mode == "disabled":
            return cls.off()

        def open_run():
            import wandb

            out_dir.mkdir(parents=True, exist_ok=True)
            return wandb.init(
                mode=mode,
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                group=group or str(cfg.experiment.name),
                name=name,
                job_type=job_type,
                dir=str(out_dir),
                config=cfg.to_dict(),
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )

        return cls(opener=open_run)

    def _fail(self, what: str, e: Exception) -> None:
        warnings.warn(f"W&B {what} failed ({type(e).__name__}: {e}); continuing without tracking", stacklevel=3)
        self._run, self._opener = None, None

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

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            try:
                import wandb

                self.run.log({key: wandb.Table(columns=columns, data=rows)})
            except Exception as e:
                self._fail("table", e)

    def confusion(self, y_true, y_pred, class_names: list[str]) -> None:
        if self.run is not None:
            try:
                import wandb

                self.run.log({"confusion_matrix": wandb.plot.confusion_matrix(
                    y_true=list(map(int, y_true)), preds=list(map(int, y_pred)), class_names=class_names)})
            except Exception as e:
                self._fail("confusion matrix", e)

    def finish(self) -> None:
        self._opener = None  # never used: never opened
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as e:
                self._fail("finish", e)
            self._run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
