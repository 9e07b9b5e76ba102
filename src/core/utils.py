"""Small shared helpers: the user-error type, atomic writes, seeding and the CLI wrapper."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one sentence instead of a traceback."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run an entry point, turning a UserError into one line on stderr and exit code 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {one_sentence(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished epochs are kept; continue with --resume", file=sys.stderr)
        sys.exit(130)


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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
