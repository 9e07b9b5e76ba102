"""The task (data.task): what one image's label is, and what every stage does with it.

    multiclass   one class per image (softmax over the classes); the default
    binary       one of two classes (softmax over both; the submission's probability is the second's)
    multilabel   any number of labels per image, none included (one sigmoid per label)
    ordinal      one grade per image, integer grades in order (APTOS's 0-4): a regression head (one
                 output, loss.name=mse or smooth_l1) or a softmax over the grades (ce, focal), read
                 as a grade score either way (the regression output, or the expected grade)

An ordinal prediction travels as the grade distribution whose mean is its score, clipped to the
grades: a score of 2.3 is 0.7 on grade 2 and 0.3 on grade 3. Its argmax is the rounded score, its
mean the score, so metrics on decisions read it as they read class probabilities, and blends average
scores. Thresholds between grades (fitted on OOF) decide from the mean instead of rounding.

Labels are kept as text: a class name, or for multi-label tasks the image's labels space-separated
in the class order ("" for none). The Task turns them into what the model is trained on, turns the
model's logits into probabilities and probabilities into decisions; stages ask it instead of
testing the task themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from src.core.utils import UserError

KINDS = ("multiclass", "binary", "multilabel", "ordinal")
REGRESSION_LOSSES = ("mse", "smooth_l1")  # loss.name values that give an ordinal task a one-output head


@dataclass(frozen=True)
class Task:
    kind: str
    classes: tuple[str, ...]
    regression: bool = False  # ordinal only: a one-output head trained on the grade (loss.name mse, smooth_l1)

    @classmethod
    def from_cfg(cls, cfg, classes) -> Task:
        """The task of a config (data.task, and loss.name for an ordinal head) over `classes`."""
        return cls(cfg.data.task, tuple(classes), cfg.loss.name in REGRESSION_LOSSES)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"data.task={self.kind} is not a task; use one of {', '.join(KINDS)}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise UserError(f"data.task=binary needs exactly 2 classes and the labels hold {len(self.classes)} "
                            f"({list(self.classes)[:6]}); use data.task=multiclass")
        if self.regression and self.kind != "ordinal":
            raise UserError(f"a regression loss (loss.name={'/'.join(REGRESSION_LOSSES)}) predicts a grade, which needs "
                            f"data.task=ordinal; this competition is {self.kind}, so use loss.name=ce or focal")
        if self.kind == "ordinal":
            bad = [c for c in self.classes if not _is_int(c)]
            if bad:
                raise UserError(f"data.task=ordinal needs integer grades as labels, and the labels hold {bad[:5]}; "
                                "map them to 0, 1, 2, ... in their order, or use data.task=multiclass")
            if len(self.classes) < 2:
                raise UserError(f"data.task=ordinal needs at least 2 grades, and the labels hold {list(self.classes)}")

    @property
    def ordinal(self) -> bool:
        return self.kind == "ordinal"

    @property
    def noun(self) -> str:
        """What the class list holds, for messages: classes, labels or grades."""
        return {"multilabel": "labels", "ordinal": "grades"}.get(self.kind, "classes")

    @property
    def n_outputs(self) -> int:
        """Width of the model's head: one per class or label, or one grade score."""
        return 1 if self.regression else len(self.classes)

    @property
    def decides_by_threshold(self) -> bool:
        """Whether the submission's decisions come from thresholds fitted on OOF (multi-label labels,
        ordinal grades) rather than the argmax."""
        return self.kind in ("multilabel", "ordinal")

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    def tags(self, label: str) -> list[str]:
        """A label as the list of class names it holds (one, or for multi-label any number)."""
        return label_tags(label, self.multilabel)

    def targets(self, labels: Iterable[str]) -> np.ndarray:
        """What the loss reads: class indices (N,) int64, or for multi-label a 0/1 matrix (N, L) float32."""
        index = {c: i for i, c in enumerate(self.classes)}
        labels = list(labels)
        unknown = sorted({t for lab in labels for t in self.tags(lab)} - set(index))
        if unknown:
            raise UserError(f"labels {unknown[:8]} are not in the class list {list(self.classes)[:10]}; delete the "
                            "folds file to split again, or fix the labels")
        if not self.multilabel:
            return np.array([index[str(lab)] for lab in labels], dtype=np.int64)
        out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        for i, lab in enumerate(labels):
            out[i, [index[t] for t in self.tags(lab)]] = 1.0
        return out

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities from logits (N, C): softmax over the classes, or a sigmoid per label."""
        z = np.asarray(logits, dtype=np.float64)
        if self.multilabel:
            return expit(z)
        if self.ordinal:
            return grade_probs(grade_scores(z), len(self.classes))
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)


def _is_int(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except (ValueError, OverflowError):
        return False


def grade_scores(z: np.ndarray) -> np.ndarray:
    """Grade scores (...,) from an ordinal head's outputs (..., C): the regression output itself
    (C = 1), or the expected grade under the softmax over the grades."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[-1] == 1:
        return z[..., 0]
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ np.arange(z.shape[-1], dtype=np.float64)


def grade_probs(score: np.ndarray, n_grades: int) -> np.ndarray:
    """Scores (N,) as grade distributions (N, n_grades): clipped to [0, n_grades - 1], split between
    the two grades around them, so that the mean is the (clipped) score and the argmax its rounding."""
    s = np.clip(np.asarray(score, dtype=np.float64), 0.0, n_grades - 1)
    lo = np.minimum(np.floor(s).astype(np.int64), n_grades - 2)
    frac = s - lo
    out = np.zeros((len(s), n_grades))
    rows = np.arange(len(s))
    out[rows, lo] = 1.0 - frac
    out[rows, lo + 1] += frac
    return out


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """The mean grade (N,) of grade distributions (N, K)."""
    return np.asarray(probs, dtype=np.float64) @ np.arange(np.shape(probs)[1], dtype=np.float64)


def label_tags(label: str, multilabel: bool) -> list[str]:
    """The class names a label holds: itself, or for a multi-label task its space-separated tags."""
    return str(label).split() if multilabel else [str(label)]


def single_label_only(kind: str, what: str, ordinal: bool = True) -> None:
    """One sentence where a stage does not handle multi-label (or, unless `ordinal`, ordinal)
    predictions yet (kind: data.task)."""
    if kind == "multilabel" or (kind == "ordinal" and not ordinal):
        raise UserError(f"{what} does not work with data.task={kind} yet; leave it out for this competition")


def canonical_tags(raw: Sequence[str], sep: str) -> list[str]:
    """Tag lists split by `sep`, stripped, without repeats, sorted: one spelling per set of labels."""
    out = []
    for value in raw:
        tags = {t.strip() for t in str(value).split(sep if sep != " " else None) if t.strip()}
        out.append(" ".join(sorted(tags)))
    return out
