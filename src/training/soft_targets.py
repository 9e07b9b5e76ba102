"""Probability targets for training: distillation from a teacher's OOF predictions (loss.distill_from)
and soft pseudo-labels. The training loader then yields (image, target row (C,)) and the loss takes
the rows as class probabilities (for a multi-label task, one probability per label); accuracy is
counted against their argmax (per label: against 0.5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from src.core.config import Config
from src.core.tasks import task_of
from src.core.utils import UserError
from src.data.tables import prob_columns
from src.training.distillation import distill_targets, teacher_oof


def fold_soft_targets(cfg: Config, train: pd.DataFrame, classes: list[str]) -> np.ndarray | None:
    """(N, C) float32 targets for a fold's training rows, or None when every target is a hard label.

    Real rows: the distillation mix (loss.distill_from) or the one-hot label. Pseudo rows: their
    blend probabilities (soft table) or the one-hot pseudo-label.
    """
    pseudo = train["pseudo"].to_numpy(bool) if "pseudo" in train else np.zeros(len(train), bool)
    soft_pseudo = bool(pseudo.any() and train.loc[pseudo, "pseudo_soft"].all())
    if cfg.loss.distill_from is None and not soft_pseudo:
        return None
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        raise UserError("train.mixup/cutmix mix hard labels; set them to 0 to train on soft targets "
                        "(loss.distill_from, soft pseudo-labels)")
    task = task_of(cfg, classes)
    task.refuse_soft_targets("set loss.distill_from to null and use hard pseudo-labels")
    out = task.one_hot(task.targets(train["label"])).astype(np.float64)
    if cfg.loss.distill_from is not None:
        real = train.loc[~pseudo]
        out[~pseudo] = distill_targets(cfg, real, task, teacher_oof(cfg, real, classes))
    if soft_pseudo:
        out[pseudo] = train.loc[pseudo, prob_columns(classes)].to_numpy(np.float64)
    return out.astype(np.float32)


class SoftTargetDataset(torch.utils.data.Dataset):
    """A training dataset whose targets are rows of a probability matrix (N, C); items may be
    asked for as (index, seed) like the dataset it wraps."""

    def __init__(self, base: torch.utils.data.Dataset, targets: np.ndarray):
        if len(base) != len(targets):
            raise ValueError(f"{len(targets)} target rows for {len(base)} images")
        self.base, self.targets = base, torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        x, _ = self.base[key]
        i = key[0] if isinstance(key, tuple) else key
        return x, self.targets[i]


def with_soft_targets(ds: torch.utils.data.Dataset, cfg: Config, train: pd.DataFrame, classes: list[str]
                      ) -> torch.utils.data.Dataset:
    """The fold's training dataset, wrapped with probability targets where distillation or soft
    pseudo-labels ask for them."""
    soft = fold_soft_targets(cfg, train, classes)
    return ds if soft is None else SoftTargetDataset(ds, soft)
