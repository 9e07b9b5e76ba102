"""Started by torchrun from tests/test_distributed.py: fold 0 of `python -m src.train` under DDP,
interrupted by an exception on every rank once epoch 0 is saved (the interruption test_train's
resume test uses), so that `torchrun -m src.train --resume` has an unfinished fold to continue.

    torchrun --standalone --nproc_per_node 2 tests/ddp_interrupted.py CONFIG [key=value ...]
"""

from __future__ import annotations

import sys

from src import distributed
from src.config import load_config
from src.trainer import train_fold


class Interrupted(Exception):
    """Stands for a crash or a pre-empted job between two epochs."""


def crash_after_first_epoch(epoch: int, value: float) -> None:
    if epoch == 0:
        raise Interrupted(f"interrupted after epoch {epoch}")


if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[2:])
    with distributed.launched(cfg.runtime.device):
        train_fold(cfg, 0, on_epoch=crash_after_first_epoch)
