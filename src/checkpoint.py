"""Checkpoints: atomic torch.save, loading with weights_only=True, RNG state capture."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from src.utils import UserError, atomic_save


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """torch.save to a temp file, then os.replace: a crash never leaves half a checkpoint."""
    return atomic_save(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True, so a downloaded checkpoint cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train that fold first or fix the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise UserError(f"cannot load checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        "it is corrupt or not a checkpoint of this project") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no model and config inside)")
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
