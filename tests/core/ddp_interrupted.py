"""Started by torchrun from tests/core/test_distributed.py: fold 0 trained under DDP, interrupted by an
exception on every rank once epoch 0 is saved (the interruption test_train's resume test uses),
a copy of the unfinished outputs kept for the test, then continued by `src.train --resume` (W&B
offline) in the same processes, which saves a second torchrun start.

    torchrun --standalone --nproc_per_node 2 tests/core/ddp_interrupted.py CONFIG COPY_DIR [key=value ...]
"""

from __future__ import annotations

import shutil
import sys

import src.train as train
from src.core import distributed
from src.core.config import load_config
from src.training.trainer import train_fold


class Interrupted(Exception):
    """Stands for a crash or a pre-empted job between two epochs."""


def crash_after_first_epoch(epoch: int, value: float) -> None:
    if epoch == 0:
        raise Interrupted(f"interrupted after epoch {epoch}")


if __name__ == "__main__":
    config, copy_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = load_config(config, overrides)
    with distributed.launched(cfg.runtime.device):
        try:
            train_fold(cfg, 0, on_epoch=crash_after_first_epoch)
            raise AssertionError("the run was not interrupted")
        except Interrupted:
            print(f"rank {distributed.rank()} interrupted", file=sys.stderr)
        if distributed.is_main():
            shutil.copytree(cfg.experiment.output_dir, copy_dir)
        distributed.barrier()
        train.main(["--config", config, "--fold", "0", "--resume", *overrides, "wandb.mode=offline"])
