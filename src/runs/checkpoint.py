"""Checkpoints: atomic torch.save, loading with weights_only=True, RNG state capture."""

from __future__ import annotations

import functools
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from src.core.config import config_from_dict
from src.core.utils import UserError, atomic_link, atomic_save


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """torch.save to a temp file, then os.replace: a crash never leaves half a checkpoint."""
    return atomic_save(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, fix: str = "retrain that fold or restore the file") -> dict:
    """Load with weights_only=True, so a downloaded checkpoint cannot run code.

    Args:
        path: the .pt file.
        fix: what the user should do when it cannot be used, ending the error's sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train that fold first or fix the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes, an interrupted copy?); {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"checkpoint {path} holds objects other than tensors and plain values, which could run "
                        f"code, so it is refused; {fix}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no model and config inside); {fix}")
    return ckpt


def rng_state() -> dict:
    """Python, numpy and torch RNG states as plain types and tensors (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- the keeper of one fold's checkpoints

# Settings that do not change what is computed; anything else must match to resume.
RESUME_MAY_CHANGE = ("loader.num_workers", "loader.pin_memory", "loader.persistent_workers", "wandb.", "train.keep_top",
                     "data.dir", "data.check_images", "data.cache", "train.compile", "experiment.output_dir", "ensemble.",
                     "runtime.device")


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


class CheckpointKeeper:
    """Owns one fold's best.pt and last.pt: the best monitored value, early stopping, the epoch
    history and the resume state, in the manner of timm's CheckpointSaver.

    `fold` is anything with `train_state()`, `load_train_state(state)` and `eval_model` (the
    trainer's FoldState): the keeper decides what is written and when, not how training runs.
    """

    def __init__(self, best: Path, last: Path, meta: dict, monitor: str, better: Callable[[float, float | None], bool],
                 early_stopping: int | None, top_k: int = 1):
        self.best_path, self.last_path, self.meta = best, last, meta
        self.monitor, self.better, self.early_stopping = monitor, better, early_stopping
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict] = []
        # top_k > 1: the weights of the K best epochs are kept in top/epoch<e>.pt (for src.average)
        self.top_k, self.top_dir = top_k, best.parent / "top"
        self.top: list[list] = []  # [value, epoch], best first

    def observe(self, epoch: int, value: float | None) -> bool:
        """Record an epoch's monitored value (None: no validation, the latest epoch is best)."""
        if value is None:
            self.best, self.best_epoch = None, epoch
            return True
        if self.better(value, self.best):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.early_stopping is not None and self.bad_epochs >= self.early_stopping

    def _state(self, fold, epoch: int, finished: bool) -> dict:
        return {
            **self.meta,
            "model": fold.eval_model.state_dict(),
            "epoch": epoch,
            "metric": self.history[-1].get(f"val_{self.monitor}") if self.history else None,
            "best_metric": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "finished": finished,
            "top": self.top,
            "train_state": {**fold.train_state(), "rng": rng_state(), "bad_epochs": self.bad_epochs},
        }

    def _rank_top(self, epoch: int) -> bool:
        """Add this epoch to the K best when it belongs there; True when it does."""
        value = self.history[-1].get(f"val_{self.monitor}") if self.history else None
        if self.top_k <= 1 or value is None or value != value:
            return False
        order = functools.cmp_to_key(lambda a, b: -1 if self.better(a[0], b[0]) else int(self.better(b[0], a[0])))
        self.top = sorted(self.top + [[value, epoch]], key=order)[: self.top_k]
        return [value, epoch] in self.top

    def _prune_top(self) -> None:
        kept = {self.top_path(e) for _, e in self.top}
        for p in self.top_dir.glob("epoch*.pt"):
            if p not in kept:
                p.unlink(missing_ok=True)

    def top_path(self, epoch: int) -> Path:
        return self.top_dir / f"epoch{epoch:03d}.pt"

    def save(self, fold, epoch: int, improved: bool) -> None:
        """After an epoch: last.pt, serialised once; best.pt (when it improved) and top/epoch<e>.pt
        (when the epoch is among the K best) are links to those bytes, as timm's CheckpointSaver
        links rather than saving again."""
        in_top = self._rank_top(epoch)
        save_checkpoint(self.last_path, self._state(fold, epoch, False))
        if improved:
            atomic_link(self.last_path, self.best_path)
        if in_top:
            atomic_link(self.last_path, self.top_path(epoch))
        if self.top_k > 1:
            self._prune_top()

    def finish(self, fold, keep_last_as_best: bool) -> None:
        """Mark last.pt finished; without validation the final weights are also best.pt."""
        if not self.history:
            return
        save_checkpoint(self.last_path, self._state(fold, self.history[-1]["epoch"], True))
        if keep_last_as_best:
            atomic_link(self.last_path, self.best_path)

    def resume(self, fold, config: dict) -> int:
        """Load last.pt into the fold's objects and this keeper; return the epoch to start from."""
        ckpt = load_checkpoint(self.last_path, fix="pass --force to start the fold over")
        stored = config_from_dict(ckpt["config"], str(self.last_path)).to_dict()  # older key names migrated
        diff = [k for k in config_diff(stored, config) if not k.startswith(RESUME_MAY_CHANGE)]
        if diff:
            raise UserError(f"the config differs from the interrupted run in {diff[:6]}; resume with the "
                            "settings it was started with, or pass --force to start over")
        theirs, mine = ckpt.get("processes", 1), self.meta.get("processes", 1)
        if theirs != mine:  # the effective batch size, and which images each step sees, would change
            raise UserError(f"the interrupted run trained on {theirs} process(es) and this one on {mine}, which would "
                            f"change the effective batch size; resume it on {theirs} (torchrun --nproc_per_node, "
                            "--nnodes), or pass --force to start over")
        st = ckpt["train_state"]
        try:
            fold.load_train_state(st)
        except RuntimeError as e:
            raise UserError(f"{self.last_path} does not fit the configured model ({str(e).splitlines()[0][:120]}); "
                            "resume with the config it was trained with, or pass --force") from None
        set_rng_state(st["rng"])
        self.meta["run_id"] = ckpt.get("run_id", self.meta.get("run_id"))  # a resumed run keeps its id
        self.history, self.best, self.best_epoch = ckpt["history"], ckpt["best_metric"], ckpt["best_epoch"]
        self.top = ckpt.get("top", [])
        self.bad_epochs = st["bad_epochs"]
        return ckpt["epoch"] + 1
