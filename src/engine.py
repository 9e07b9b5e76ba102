"""The training loop's two halves, in the manner of timm's train.py: one epoch of updates, and
validation. The trainer (src/trainer.py) sets a fold up and conducts them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from src.metrics import softmax, summary
from src.runtime import Runtime, predict
from src.utils import UserError

if TYPE_CHECKING:
    from src.trainer import FoldState


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


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
    bar = tqdm(s.train_loader, total=s.batches, desc=f"fold {s.fold} epoch {epoch}", leave=False, disable=None)
    s.optimizer.zero_grad(set_to_none=True)
    for step, (x, y) in enumerate(bar):
        if step >= s.batches:
            break
        x, y = s.rt.batch(x), y.to(s.rt.device, non_blocking=True)
        target = y
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
    logits = predict([model], loader, rt)[0, 0]  # (N, C)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.tensor(np.asarray(targets), dtype=torch.long)))
    probs = softmax(logits)
    return probs, {"loss": loss, **summary(targets, probs, metric)}
