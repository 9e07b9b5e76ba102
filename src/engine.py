"""The training loop: a fold's state, one epoch of updates, and validation, in the manner of timm's
train.py. The trainer (src/trainer.py) sets a fold up and conducts them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.utils import ModelEmaV3

from src.config import Config
from src.data import EpochSampler
from src.metrics import softmax, summary
from src.model import Frozen
from src.progress import progress
from src.runs import FoldPaths
from src.runtime import Runtime, predict
from src.size_schedule import resize_batch
from src.utils import UserError


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class FoldState:
    """Everything one fold trains with; built by setup_fold, advanced by the engine."""

    cfg: Config
    fold: int
    fp: FoldPaths
    rt: Runtime
    classes: list[str]
    train_df: pd.DataFrame
    val_df: pd.DataFrame | None
    model: torch.nn.Module
    frozen: Frozen
    counts: dict
    sampler: EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    batches: int
    seed: int
    criterion: torch.nn.Module | None = None
    mixup: Mixup | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEmaV3 | None = None
    swa: torch.optim.swa_utils.AveragedModel | None = None  # train.swa: the running average (src/averaging.py)
    num_updates: int = 0
    train_size: int | None = None  # aug.size_schedule: this epoch's training input size (src/size_schedule.py)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and kept: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def train_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_train_state(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.load_state_dict(st["ema"])
        if self.swa is not None and st.get("swa") is not None:
            self.swa.load_state_dict(st["swa"])
        self.num_updates = st["num_updates"]


def _update(s: FoldState) -> None:
    """One optimizer step (after accumulation): clip, step, schedule, EMA."""
    cfg = s.cfg.train
    if cfg.clip_grad is not None:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.clip_grad)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.num_updates += 1
    s.scheduler.step_update(num_updates=s.num_updates)
    if s.ema is not None:
        s.ema.update(s.model, step=s.num_updates)


def train_one_epoch(s: FoldState, epoch: int) -> dict:
    """Train over at most `s.batches` batches; return the epoch's lr, mean loss and accuracy."""
    accum = s.cfg.train.accum_steps
    loss_sum, correct, seen = 0.0, 0, 0
    bar = progress(s.train_loader, total=s.batches, desc=f"fold {s.fold} epoch {epoch}")
    s.optimizer.zero_grad(set_to_none=True)
    for step, (x, y) in enumerate(bar):
        if step >= s.batches:
            break
        x, y = s.rt.batch(x), y.to(s.rt.device, non_blocking=True)
        target = y
        if y.ndim == 2:  # probability targets (src/soft_targets.py): accuracy against their argmax
            y = y.argmax(1)
        x = resize_batch(x, s.train_size)
        if s.mixup is not None:
            x, target = s.mixup(x, y)
        with s.rt.autocast():
            logits = s.model(x)
            loss = s.criterion(logits, target)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at epoch {epoch}, step {step}; lower optim.lr, "
                "set train.clip_grad, or set runtime.amp=off"
            )
        s.scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == s.batches:
            _update(s)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    return {"lr": max(g["lr"] for g in s.optimizer.param_groups),
            "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


def validate(model: torch.nn.Module, loader, rt: Runtime, targets: np.ndarray, metric: str) -> tuple[np.ndarray, dict]:
    """(probabilities N x C, {'loss', 'accuracy', 'f1_macro', metric}) over a validation loader."""
    logits = predict([model], loader, rt, desc="validation")[0, 0]  # (N, C)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.tensor(np.asarray(targets), dtype=torch.long)))
    probs = softmax(logits)
    return probs, {"loss": loss, **summary(targets, probs, metric)}
