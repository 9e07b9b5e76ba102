"""Small shared helpers: the user-error type, atomic writes, seeding and the numpy softmax."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one sentence instead of a traceback."""


class MissingDecoder(UserError):
    """A file no installed decoder reads (compressed DICOM pixel data without its plugin): the
    environment's fault, not the file's, so the image check stops on it rather than drop every such file."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 image', '3 images': a count and its noun, for messages."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def one_sentence(e: UserError) -> str:
    """A UserError's sentence; one raised in a DataLoader worker arrives wrapped in the worker's
    traceback ("Caught UserError in DataLoader worker process 0. Original Traceback ..."), whose
    last line holds it."""
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        return last.split("UserError: ", 1)[-1]
    return text


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to a temp file beside `path`, then rename it into place."""
    return _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_save(path: str | Path, save: Callable[[str], None]) -> Path:
    """Call `save(tmp_path)` (torch.save, df.to_csv, np.save, fig.savefig ...) then rename."""
    return _atomic(Path(path), save)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """np.save (no pickles) to a temp file beside `path`, then rename it into place."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array, allow_pickle=False)

    return _atomic(Path(path), write)


def atomic_link(src: str | Path, dst: str | Path) -> Path:
    """Make `dst` another name of `src`'s bytes (a hard link; a copy where the file system has
    none), renamed into place like the writes above. The bytes are written once; a later atomic
    replacement of `src` leaves `dst` holding what `src` held."""
    def link(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    return _atomic(Path(dst), link)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A seed for (seed, fold, epoch, ...): independent streams for every combination of the parts."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits; in z's own dtype."""
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
