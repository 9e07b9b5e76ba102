"""Distillation from OOF: a teacher experiment's out-of-fold predictions as soft targets.

Every training image's soft target is the teacher's OOF prediction for it, made by the teacher's
fold model that validated on that image and so never trained on it. The teacher must have been
trained on the student's very split (the same folds file, every id in the same fold), otherwise
a teacher fold model could have trained on the images it labels.

    target = (1 - loss.distill_weight) * one_hot(label) + loss.distill_weight * softmax(log p_teacher / T)

For a multi-label task each label is its own two-class problem: the 0/1 label row is mixed with the
teacher's probability per label, sharpened or softened by T on its log-odds (sigmoid(logit p / T)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.core.config import Config
from src.core.tasks import Task
from src.core.utils import UserError
from src.data.folds import folds_path
from src.runs.layout import fold_paths, oof_probs, read_oof
from src.runs.members import open_member


def teacher_oof(cfg: Config, split: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The teacher's OOF table (id, fold, prob_<class>), checked against the student's split
    (`split`: every training row with its id and fold)."""
    name = cfg.loss.distill_from
    if name == cfg.experiment.name:
        raise UserError(f"loss.distill_from={name} is this experiment; name a finished teacher experiment")
    teacher = open_member(name, cfg.experiment.output_dir, "error", cfg.data.dir,
                          needs_every_fold="each training image's target is the OOF prediction of the teacher fold "
                                           "that validated it")
    mine, theirs = folds_path(cfg), folds_path(teacher.cfg)
    if mine.resolve() != theirs.resolve():
        raise UserError(f"teacher {name} was trained on the folds file {theirs}, this experiment uses {mine}; "
                        "distil only from a teacher trained on the same split (data.n_folds, data.fold_seed, "
                        "data.group_col)")
    if teacher.classes != classes:
        raise UserError(f"teacher {name} has other classes than this experiment; distil from the same competition")
    parts = [read_oof(fold_paths(teacher.exp_dir, k).oof, classes, teacher.records[k].get("run_id"))
             for k in teacher.folds]
    oof = pd.concat(parts, ignore_index=True)
    fold_of = dict(zip(split["id"], split["fold"]))
    moved = [i for i, f in zip(oof["id"], oof["fold"]) if fold_of.get(i, f) != f]
    if moved or not set(split["id"]) <= set(oof["id"]):
        raise UserError(f"teacher {name}'s OOF predictions do not follow this experiment's folds file {mine} "
                        f"({len(moved)} images in other folds, {len(set(split['id']) - set(oof['id']))} missing); "
                        "retrain the teacher on this split")
    return oof


def distill_targets(cfg: Config, rows: pd.DataFrame, task: Task, oof: pd.DataFrame) -> np.ndarray:
    """Soft targets (N, C) of training rows (id, fold, label) from the teacher's OOF table."""
    classes = list(task.classes)
    by_id = oof.set_index("id")
    t = by_id.loc[rows["id"].to_numpy()]
    if not (t["fold"].to_numpy() == rows["fold"].to_numpy()).all():
        raise UserError("a teacher OOF prediction comes from another fold than the image's; retrain the teacher")
    p, temp = oof_probs(t, classes), cfg.loss.distill_temperature
    teacher = task.teacher(p, temp)
    hard = task.one_hot(task.targets(rows["label"]))
    w = cfg.loss.distill_weight
    return (1.0 - w) * hard + w * teacher
