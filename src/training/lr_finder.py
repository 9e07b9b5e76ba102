"""The learning-rate range test (Smith 2015; fastai's lr_find): train fold 0's training part for a
few hundred steps while the rate grows exponentially, watch the smoothed loss, suggest a rate.

    python -m src.train --lr-find                 # shows it: a suggestion, a plot, nothing trained
    optim.lr: find                                # uses it: once per experiment, before the first fold

The sweep runs the real fold setup (model, freezing, layer decay, loss, augmentation, mixup,
optimizer, accumulation, AMP) and puts the weights, the optimizer and the grad scaler back
afterwards. Its result is outputs/<experiment>/lr_find.{json,csv,png}; `optim.lr: find` takes the
rate the experiment's finished folds trained with, else that json when it was found with the same
settings, else runs the sweep once and records it: every fold, resume and the Kaggle bundle then
read the same number from the resolved config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import distributed
from src.core.config import Config, config_from_dict
from src.core.runtime import Runtime
from src.core.utils import UserError, atomic_save, atomic_write_text
from src.models.model import set_train_mode
from src.models.optim import set_lr
from src.runs.checkpoint import RESUME_MAY_CHANGE, config_diff
from src.runs.layout import finished_folds, fold_paths, fold_record
from src.training.engine import FoldState, step_loss
from src.training.trainer import optimization, setup_fold

SMOOTHING = 0.98  # the loss's exponential moving average (debiased), as fastai's
DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this many times its minimum
# Settings that do not change what the sweep computes: a recorded sweep stays valid across them.
SWEEP_IGNORES = ("optim.lr", "sched.", "train.epochs", "train.min_steps", "train.ema", "train.swa", "train.monitor",
                 "train.early_stopping", "train.keep_top", "metric.", "loss.distill_", *RESUME_MAY_CHANGE)
RULES = {
    "valley": "the middle of the longest stretch of steadily falling loss",
    "steepest": "where the loss falls fastest against log(rate)",
    "minimum": "a tenth of the rate at the lowest loss",
}


@dataclass
class Sweep:
    """What a range test saw: each step's rate and loss, the smoothed loss, and the suggestions."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float] = field(default_factory=list)
    stopped: str = ""

    def __post_init__(self):
        avg, self.smoothed = 0.0, []
        for i, loss in enumerate(self.losses):
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            self.smoothed.append(avg / (1 - SMOOTHING ** (i + 1)))

    def suggestions(self) -> dict[str, float]:
        """The rate each rule suggests (two significant digits)."""
        lrs, sm = np.asarray(self.lrs), np.asarray(self.smoothed)
        lowest = int(np.argmin(sm))
        out = {"minimum": lrs[lowest] / 10}
        # Steepest: the most negative slope against log10(rate), before the minimum and past the
        # first steps, where the debiased average still moves by itself.
        skip = min(len(sm) // 10, max(lowest - 1, 0))
        upto = max(lowest, skip + 2)
        slope = np.gradient(sm, np.log10(lrs))[skip:upto]
        out["steepest"] = lrs[skip + int(np.argmin(slope))] if len(slope) else out["minimum"]
        # Valley: the longest run over which the smoothed loss keeps falling; its middle (in log rate).
        best, run_start = (0, 0), 0
        for i in range(1, len(sm)):
            if sm[i] >= sm[i - 1]:
                run_start = i
            elif i - run_start > best[1] - best[0]:
                best = (run_start, i)
        if best[1] - best[0] >= 2:
            out["valley"] = float(np.sqrt(lrs[best[0]] * lrs[best[1]]))
        else:
            out["valley"] = out["minimum"]
        return {k: float(f"{v:.2g}") for k, v in out.items()}


def _batches(loader):
    """The training loader, epoch after epoch (a small fold has few batches)."""
    while True:
        yield from loader


def sweep(s: FoldState, start_lr: float, end_lr: float, steps: int) -> Sweep:
    """The range test on a set-up fold (trainer.setup_fold + optimization): `steps` optimizer steps
    from start_lr to end_lr, each group at the rate times its lr_scale; weights, optimizer and
    scaler (the whole FoldState.snapshot) are restored afterwards, whatever happens."""
    cfg, task = s.cfg, s.task
    accum = cfg.train.accum_steps
    snap = s.snapshot()
    lrs, losses, stopped = [], [], f"ran all {steps} steps"
    batches = _batches(s.train_loader)
    try:
        set_train_mode(s.model, s.frozen)
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
            set_lr(s.optimizer, lr)
            total = 0.0
            for j in range(accum):
                x, y = next(batches)
                loss, _, _ = step_loss(s, s.model, x, y, task)
                s.backward(loss / accum, need_update=j == accum - 1)
                total += float(loss.detach()) / accum
            if not math.isfinite(total):
                stopped = f"stopped at {lr:.2g}: the loss became {total}"
                break
            lrs.append(lr)
            losses.append(total)
            smooth = Sweep(lrs, losses).smoothed
            if i >= 5 and smooth[-1] > DIVERGED * min(smooth):
                stopped = f"stopped at {lr:.2g}: the loss passed {DIVERGED:g}x its minimum"
                break
    finally:
        s.restore(snap)
    if len(lrs) < 10:
        raise UserError(f"the learning-rate finder's loss diverged within {len(lrs)} steps of {start_lr:g}; lower "
                        "optim.find_start_lr (or set train.clip_grad)")
    return Sweep(lrs, losses, stopped=stopped)


def plot_sweep(sw: Sweep, chosen: str, path: Path) -> Path:
    """Loss against rate (log axis): each step's loss faint, the smoothed loss, every rule's suggestion."""
    from src.core.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(sw.lrs, sw.losses, color="0.75", lw=0.8, label="loss per step")
    ax.plot(sw.lrs, sw.smoothed, color="C0", lw=2, label=f"smoothed (EMA {SMOOTHING})")
    for k, (rule, lr) in enumerate(sw.suggestions().items()):
        ax.axvline(lr, color=f"C{k + 1}", lw=2.5 if rule == chosen else 1, ls="-" if rule == chosen else "--",
                   label=f"{rule}: {lr:.2g}" + ("  (suggested)" if rule == chosen else ""))
    lo, hi = min(sw.smoothed), sw.smoothed[0]
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-8), max(hi, lo) + 0.6 * (hi - lo + 1e-8))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test: {len(sw.lrs)} steps, {sw.stopped}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.08, which="minor")
    return save_figure(fig, path)


def lr_find_paths(cfg: Config) -> dict[str, Path]:
    return {ext: cfg.out_dir / f"lr_find.{ext}" for ext in ("json", "csv", "png")}


def find_lr(cfg: Config) -> dict:
    """Run the range test on fold 0's training part, write lr_find.{json,csv,png}, print the
    suggestion; return the json's content."""
    o = cfg.optim
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    optimization(s, lr=o.find_start_lr)
    print(f"lr finder: {o.find_steps} steps from {o.find_start_lr:g} to {o.find_end_lr:g} on fold 0's "
          f"{len(s.train_df)} training images (batch {cfg.loader.batch_size} x {cfg.train.accum_steps} accumulated)")
    sw = sweep(s, o.find_start_lr, o.find_end_lr, o.find_steps)
    sugg, paths = sw.suggestions(), lr_find_paths(cfg)
    result = {"lr": sugg[o.find_rule], "rule": o.find_rule, "suggestions": sugg, "steps_run": len(sw.lrs),
              "stopped": sw.stopped, "config": cfg.to_dict()}
    table = pd.DataFrame({"lr": sw.lrs, "loss": sw.losses, "smoothed": sw.smoothed})
    atomic_save(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    plot_sweep(sw, o.find_rule, paths["png"])
    atomic_write_text(paths["json"], json.dumps(result, indent=2))
    print(f"  {sw.stopped}; suggestions: " + ", ".join(f"{k} {v:.2g}" for k, v in sugg.items()))
    print(f"suggested optim.lr={result['lr']:.2g} ({o.find_rule}: {RULES[o.find_rule]}); plot {paths['png']}")
    return result


def _recorded(cfg: Config) -> tuple[float, str] | None:
    """The rate the experiment already uses: its finished folds', else a sweep found with these settings."""
    for k in finished_folds(cfg.out_dir):
        lr = fold_record(fold_paths(cfg.out_dir, k))["config"]["optim"]["lr"]
        if isinstance(lr, (int, float)):
            return float(lr), f"the rate fold {k} trained with"
    path = lr_find_paths(cfg)["json"]
    if path.is_file():
        found = json.loads(path.read_text())
        theirs = config_from_dict(found["config"], str(path)).to_dict()
        diff = [k for k in config_diff(theirs, cfg.to_dict()) if not k.startswith(SWEEP_IGNORES)]
        if not diff:
            return float(found["lr"]), f"found earlier ({found['rule']}, {path})"
        print(f"optim.lr=find: {path} was found with other settings ({diff[:4]}); sweeping again")
    return None


def resolve_lr(cfg: Config) -> Config:
    """`optim.lr: find` made a number (see the module's docstring); any other config unchanged."""
    if cfg.optim.lr != "find":
        return cfg
    got = distributed.from_main(lambda: _recorded(cfg))
    if got is None:
        if distributed.world_size() > 1:
            raise UserError("optim.lr=find sweeps in one process: run python -m src.train --config <this config> --lr-find "
                            "once without torchrun (or set optim.lr to a number), then launch torchrun again")
        got = find_lr(cfg)["lr"], "found now"
    lr, how = got
    print(f"optim.lr=find: {lr:.2g} ({how})")
    return cfg.with_lr(lr)
