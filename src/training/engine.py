"""The training loop: a fold's state, one epoch of updates, and validation, in the manner of timm's
train.py. The trainer (src/training/trainer.py) sets a fold up and conducts them."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3

from src.core import distributed
from src.core.config import Config
from src.core.distributed import EpochSampler
from src.core.progress import progress
from src.core.runtime import Norm, Runtime, on_image, predict
from src.core.tasks import Task, task_of
from src.core.utils import UserError
from src.data.answers import AnswerIndex, answer_index
from src.evaluation.metrics import summary
from src.models.model import Frozen
from src.models.optim import LossScaler
from src.runs.layout import FoldPaths
from src.training.size_schedule import resize_batch


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
    norm: Norm
    criterion: torch.nn.Module | None = None
    mixup: Mixup | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    scaler: LossScaler | None = None
    ema: ModelEmaV3 | None = None
    swa: torch.optim.swa_utils.AveragedModel | None = None  # train.swa: the running average (src/training/weight_averaging.py)
    num_updates: int = 0
    epochs: int = 0  # this fold's epochs: train.epochs, or more under train.min_steps (trainer.fold_epochs)
    train_size: int | None = None  # aug.size_schedule: this epoch's training input size (src/training/size_schedule.py)
    forward: object = None  # the compiled training forward (train.compile), else None: `net` itself
    ddp: torch.nn.Module | None = None  # the model in DistributedDataParallel under torchrun
    meta: dict | None = None  # data.meta_cols: the preprocessing fitted on this fold's training rows (meta_table)

    @property
    def answers(self) -> AnswerIndex | None:
        """The validation images' answers (data.answer_id), which the fold's scores are of."""
        return None if self.val_df is None else answer_index(self.val_df, self.cfg.data.aggregate)

    @property
    def task(self) -> Task:
        """The competition's task over this fold's classes (src.core.tasks)."""
        return task_of(self.cfg, self.classes)

    @property
    def net(self) -> torch.nn.Module:
        """What training calls: the DDP wrapper (which synchronises gradients) or the model itself."""
        return self.ddp if self.ddp is not None else self.model

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

    def snapshot(self) -> dict:
        """A deep copy of train_state() (weights and BatchNorm buffers, EMA, SWA, optimizer, schedule,
        scaler), to put back with restore()."""
        return copy.deepcopy(self.train_state())

    def restore(self, snap: dict) -> None:
        """Back to a snapshot(), with no gradients left over."""
        self.load_train_state(snap)
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, need_update: bool = True) -> None:
        """Backpropagate `loss`; with `need_update` (an accumulation window complete), also the
        optimizer step (LossScaler): clip to train.clip_grad, step, zero the gradients."""
        self.scaler(loss, self.optimizer, clip_grad=self.cfg.train.clip_grad, parameters=self.model.parameters(),
                    need_update=need_update)


def _update(s: FoldState) -> None:
    """After an optimizer step: count it, schedule, EMA."""
    s.num_updates += 1
    s.scheduler.step_update(num_updates=s.num_updates)
    if s.ema is not None:
        s.ema.update(s.model, step=s.num_updates)


SYNC_EVERY = 50  # steps between reads of the running loss (the only device syncs of an epoch)


class CompiledForward:
    """torch.compile of a model's forward that falls back to eager, with a warning, where it
    cannot compile (no C++ compiler for the CPU backend, an unsupported model or platform).
    Compilation happens at the first call, so only the first call is guarded: errors after it
    (out of memory, a NaN) are the model's own and propagate."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.compiled, self.checked = model, torch.compile(model), False

    def __call__(self, x: torch.Tensor | tuple) -> torch.Tensor:
        if self.checked:
            return self.compiled(x)
        try:
            out = self.compiled(x)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
            warnings.warn(f"train.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                          "training continues without compiling", stacklevel=2)
            self.compiled = self.model
            out = self.model(x)
        self.checked = True
        return out


def _check_finite(loss_sum: float, epoch: int, step: int) -> None:
    if not np.isfinite(loss_sum):
        raise TrainingDiverged(
            f"the training loss became {loss_sum} at epoch {epoch}, by step {step}; lower optim.lr, "
            "set train.clip_grad, or set runtime.amp=off"
        )


def step_loss(s: FoldState, forward, x: torch.Tensor, y: torch.Tensor, task: Task
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch through the fold's normalisation, size schedule, mixup, autocast and loss:
    (loss, logits, the labels accuracy is counted against)."""
    x, y = s.rt.batch(x, s.norm), y.to(s.rt.device, non_blocking=True)
    target, y = y, task.accuracy_labels(y)  # probability targets (soft_targets.py): accuracy against their argmax
    x = on_image(x, lambda im: resize_batch(im, s.train_size))
    if s.mixup is not None:  # a regression head mixes its grades as one dense target column
        x, target = s.mixup(x, task.mixup_target(y))
    with s.rt.autocast():
        logits = forward(x)
        loss = s.criterion(logits, target)
    return loss, logits, y


def train_one_epoch(s: FoldState, epoch: int) -> dict:
    """Train over at most `s.batches` batches; return the epoch's lr, mean loss and accuracy,
    images per second and the share of the time spent waiting for the loader.

    The loss and the hit count are summed on the device and read every SYNC_EVERY steps (for
    the progress display and the divergence check) and at the end, so the host never waits
    for the device inside a step.
    """
    accum, dev = s.cfg.train.accum_steps, s.rt.device
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.float32, device=dev)  # float: a regression task counts NaN (no hits)
    seen, wait = 0, 0.0
    forward = s.forward or s.net
    batches = iter(s.train_loader)
    s.optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    task = s.task  # asked once: the step loop is the hot path
    bar = progress(range(s.batches), desc=f"fold {s.fold} epoch {epoch}")
    for step in bar:
        tw = time.perf_counter()
        x, y = next(batches)
        wait += time.perf_counter() - tw
        loss, logits, y = step_loss(s, forward, x, y, task)
        need_update = (step + 1) % accum == 0 or step + 1 == s.batches
        s.backward(loss / accum, need_update)
        if need_update:
            _update(s)
        loss_sum += loss.detach().float() * len(y)
        correct += task.hits(logits.detach(), y)
        seen += len(y)
        if (step + 1) % SYNC_EVERY == 0:
            _check_finite(loss_sum.item(), epoch, step)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
    total_loss, hits = loss_sum.item(), correct.item()  # waits for the device: the epoch's real end
    _check_finite(total_loss, epoch, s.batches - 1)
    elapsed = time.perf_counter() - t0
    return {"lr": max(g["lr"] for g in s.optimizer.param_groups),
            "train_loss": total_loss / max(seen, 1), "train_accuracy": hits / max(seen, 1),
            "img_per_s": round(seen / elapsed, 1) if elapsed > 0 else float("nan"),
            "data_wait": round(wait / elapsed, 4) if elapsed > 0 else float("nan")}


def _check_finite_validation(logits: np.ndarray, loss: float, what: str) -> None:
    """A diverged model can keep a finite training loss (huge, not NaN) while it predicts NaN: such
    an epoch must not be scored (a metric of the argmax looks plausible), kept as best or written.
    Checked on the logits, before an activation that cannot take NaN (an ordinal grade score)."""
    bad = int((~np.isfinite(logits.reshape(len(logits), -1))).any(axis=1).sum())  # images, not cells
    if bad or not np.isfinite(loss):
        raise TrainingDiverged(
            f"{what} diverged: its validation loss is {loss:.4g} and {bad} of {len(logits)} validation images have "
            "non-finite predictions; lower optim.lr (python -m src.train --lr-find suggests one) or set "
            "train.clip_grad, then train the fold again with --force"
        )


def validate(model: torch.nn.Module, loader, rt: Runtime, targets: np.ndarray, metric: str,
             norm: Norm | None = None, task: Task | None = None, what: str = "the model",
             answers: AnswerIndex | None = None) -> tuple[np.ndarray, dict]:
    """(probabilities N x C, {'loss', 'accuracy', 'f1_macro', metric}) over a validation loader.
    `targets`: class indices (N,), or with a multi-label task a 0/1 matrix (N, L) (Task.targets).
    `answers` (data.answer_id): the scores are the answers' (the loss stays the images'), the probabilities the images'.
    Raises TrainingDiverged, naming `what` (e.g. "fold 0 at epoch 3"), on a non-finite loss or prediction."""
    part = predict([model], loader, rt, desc="validation", norm=norm)[0, 0] if len(loader.dataset) else None
    logits = distributed.gather_rows(part)  # (N, C), every rank's rows in order (this rank's only in one process)
    task = task or Task()
    loss = task.validation_loss(logits, targets)
    _check_finite_validation(logits, loss, what)
    probs = task.activate(logits)
    scored = (targets, probs) if answers is None else (answers.rows(targets), answers.probs(task, probs))
    return probs, {"loss": loss, **summary(*scored, metric)}
