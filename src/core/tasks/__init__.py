"""The task (data.task): what one image's label is, and what every stage does with it.

    multiclass   one class per image (softmax over the classes); the default
    binary       one of two classes (softmax over both; the submission's probability is the second's)
    multilabel   any number of labels per image, none included (one sigmoid per label)
    ordinal      one grade per image, integer grades in order (APTOS's 0-4): a regression head (one
                 output, loss.name=mse or smooth_l1) or a softmax over the grades (ce, focal), read
                 as a grade score either way (the regression output, or the expected grade)
    regression   one number per image (PetFinder's Pawpularity): a one-output head (mse, smooth_l1,
                 or bce on the value scaled to [0, 1] by data.target_range), clipped to that range;
                 its class list is the target column, so predictions are one column of values

Top-k (MAP@k, Humpback, Happywhale) is not a task of its own: it is how a multi-class task decodes
when the metric is map@k or the sample submission holds several ranked labels (its `formats`).

One class per kind (base.py: multiclass and binary; multilabel.py; ordinal.py; regression.py), each answering every stage's question, so that no stage tests the kind:
how labels become targets, how the folds are drawn, the head's width and activation, the training
hits and the validation loss, the mixup targets, which metrics fit, how probabilities are checked, re-expressed and
decided, which submission formats it writes, and its nouns in messages. Where the answer is code
that lives in a higher layer (the loss modules, the blend rules, the threshold fitters, the table
readers, the report's figures), the task names its role (`head`, `space`, `decision`, `label_form`)
and that stage keeps one table from role to function; a new kind that reuses the roles is one class
(one module here, registered in TASKS), and a new role value is one entry in each of that role's tables.

An ordinal prediction travels as the grade distribution whose mean is its score, clipped to the
grades: a score of 2.3 is 0.7 on grade 2 and 0.3 on grade 3. Its argmax is the rounded score, its
mean the score, so metrics on decisions read it as they read class probabilities, and blends average
scores. Thresholds between grades (fitted on OOF) decide from the mean instead of rounding.

Labels are kept as text: a class name, or for multi-label tasks the image's labels space-separated
in the class order ("" for none). A task with no classes yet (`task_of(cfg)`, the kind-only form)
answers what the folds and tables ask before the labels are read; `with_classes` completes it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from src.core.tasks.base import (
    FORMATS,
    REGRESSION_LOSSES,
    SPACE_IN_TAG,
    Binary,
    Task,
    canonical_tags,
    join_tags,
    split_tags,
)
from src.core.tasks.multilabel import Multilabel
from src.core.tasks.ordinal import Ordinal, expected_grade, grade_probs, grade_scores
from src.core.tasks.regression import Regression
from src.core.utils import UserError

__all__ = ["FORMATS", "KINDS", "REGRESSION_LOSSES", "TASKS", "Binary", "Multilabel", "Ordinal", "Regression", "SPACE_IN_TAG", "Task",
           "canonical_tags", "expected_grade", "grade_probs", "grade_scores", "join_tags", "make_task", "split_tags", "task_for_targets", "task_of"]

TASKS: dict[str, type[Task]] = {t.name: t for t in (Task, Binary, Multilabel, Ordinal, Regression)}
KINDS = tuple(TASKS)


def task_of(cfg, classes: Iterable[str] | None = None) -> Task:
    """The task of a config (data.task, and loss.name for an ordinal or regression head; data.target_range
    for regression), over `classes` or, before the labels are read, over none (the kind-only form)."""
    if cfg.data.task not in TASKS:
        make_task(cfg.data.task)  # the one sentence naming the kinds
    return TASKS[cfg.data.task].from_config(cfg, classes)


def make_task(kind: str, classes: Iterable[str] = (), regression: bool = False) -> Task:
    """The task of kind `kind` (a data.task value) over `classes`."""
    if kind not in TASKS:
        raise UserError(f"data.task={kind} is not a task; use one of {', '.join(KINDS)}")
    return TASKS[kind](tuple(classes), regression)


def task_for_targets(y: np.ndarray) -> Task:
    """The task a target array implies, for metrics scored without a config (kind-only): a 0/1
    matrix (N, L) is multi-label, values (N,) of a float type regression, class indices (N,) single-label."""
    if np.ndim(y) == 2:
        return Multilabel()
    return Regression() if np.issubdtype(np.asarray(y).dtype, np.floating) else Task()
