"""Weight averaging: stochastic weight averaging over a fold's last epochs (train.swa), averaging
of saved checkpoints (src.average), and BatchNorm statistics recomputed for averaged weights.

An average of weights is not an average of functions: BatchNorm running statistics recorded for
any one of the averaged models do not fit the average, so they are recomputed with one pass
over the fold's training images (torch.optim.swa_utils.update_bn).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from src.core import distributed
from src.core.runtime import Norm, Runtime
from src.core.tasks import Task
from src.core.utils import UserError
from src.evaluation.metrics import table_summary
from src.runs.checkpoint import save_checkpoint
from src.runs.layout import fold_paths, oof_probs, read_done, read_oof, write_oof
from src.training.engine import FoldState, validate


def swa_start_epoch(epochs: int, swa_epochs: int) -> int:
    """The first epoch whose weights join the average: the last `swa_epochs` epochs."""
    return max(0, epochs - swa_epochs)


def new_swa(model: torch.nn.Module) -> AveragedModel:
    """An equal-weight running average of `model`'s parameters (buffers are recomputed at the end)."""
    return AveragedModel(model, use_buffers=False)


def recompute_bn(model: torch.nn.Module, batches: Iterable, rt: Runtime, limit: int | None = None,
                 norm: Norm | None = None) -> None:
    """Reset and re-estimate every BatchNorm's running mean and variance over (x, y) batches
    (uint8 batches normalised on the device with `norm`); under torchrun, rank 0's estimate."""

    def inputs():
        for step, (x, _) in enumerate(batches):
            if limit is not None and step >= limit:
                break
            yield (rt.batch(x, norm),)  # update_bn forwards an item's first element: the (image, metadata) pair whole

    with torch.no_grad(), rt.autocast():
        update_bn(inputs(), model)
    distributed.same_buffers(model)
    model.eval()


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors of several state dicts of one model;
    integer tensors (BatchNorm's num_batches_tracked) are taken from the first."""
    if not states:
        raise UserError("no checkpoints to average")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise UserError("the checkpoints to average hold different models; average checkpoints of one run")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


# ---------------------------------------------------------------- SWA inside a fold's training


def swa_paths(fold_dir: Path) -> tuple[Path, Path]:
    """(swa.pt, swa_oof.csv) of a fold folder."""
    return fold_dir / "swa.pt", fold_dir / "swa_oof.csv"


def swa_step(s: FoldState, epoch: int) -> None:
    """After training an epoch: add the weights to the running average once the SWA epochs began."""
    cfg = s.cfg.train
    if s.swa is not None and epoch >= swa_start_epoch(s.epochs, cfg.swa_epochs):
        s.swa.update_parameters(s.model)


def finish_swa(s: FoldState, meta: dict, epoch: int) -> dict | None:
    """Recompute BatchNorm for the averaged weights, save swa.pt and, with validation, score them
    and write swa_oof.csv; the scores (or None without SWA) for done.json. Called on every rank
    under torchrun (validation is gathered); rank 0 writes."""
    if s.swa is None or int(s.swa.n_averaged) == 0:
        return None
    model = s.swa.module
    recompute_bn(model, s.train_loader, s.rt, s.batches, s.norm)
    ckpt, oof = swa_paths(s.fp.dir)
    n = int(s.swa.n_averaged)
    if distributed.is_main():
        save_checkpoint(ckpt, {**meta, "model": model.state_dict(), "epoch": epoch, "swa_epochs": n})
    out = {"swa_epochs": n}
    if s.val_df is not None:  # every rank validates its share; rank 0 writes
        probs, scores = validate(model, s.val_loader, s.rt, s.task.targets(s.val_df["label"]), s.cfg.metric.name, s.norm,
                                  s.task, answers=s.answers)
        if distributed.is_main():
            write_oof(oof, s.val_df["id"], s.fold, s.val_df["label"], s.val_df.get("target"), probs, s.classes,
                      meta["run_id"], epoch, s.val_df.get("answer"))
        out.update(scores)
        print(f"fold {s.fold}: SWA of the last {n} epochs, BatchNorm recomputed: " +
              ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return out


def swa_cv(exp_dir: Path, folds: list[int], task: Task, metric: str, how: str) -> dict | None:
    """The SWA models' OOF scores over `folds` when every one of them has a swa_oof.csv of its
    finished run (one left from an earlier run of the fold does not count), else None."""
    parts = []
    for k in folds:
        fp = fold_paths(exp_dir, k)
        oof = swa_paths(fp.dir)[1]
        if not oof.is_file():
            return None
        df = read_oof(oof, list(task.classes))
        if set(df["run_id"]) != {read_done(fp).get("run_id")}:
            return None
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    classes = list(task.classes)
    return table_summary(df, oof_probs(df, classes), task, metric, how)  # per answer, with data.answer_id
