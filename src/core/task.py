"""The task (data.task): what one image's label is, and what every stage does with it.

    multiclass   one class per image (softmax over the classes); the default
    binary       one of two classes (softmax over both; the submission's probability is the second's)
    multilabel   any number of labels per image, none included (one sigmoid per label)

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

KINDS = ("multiclass", "binary", "multilabel")


@dataclass(frozen=True)
class Task:
    kind: str
    classes: tuple[str, ...]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"data.task={self.kind} is not a task; use one of {', '.join(KINDS)}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise UserError(f"data.task=binary needs exactly 2 classes and the labels hold {len(self.classes)} "
                            f"({list(self.classes)[:6]}); use data.task=multiclass")

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
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)


def label_tags(label: str, multilabel: bool) -> list[str]:
    """The class names a label holds: itself, or for a multi-label task its space-separated tags."""
    return str(label).split() if multilabel else [str(label)]


def single_label_only(kind: str, what: str) -> None:
    """One sentence where a stage does not handle multi-label predictions yet (kind: data.task)."""
    if kind == "multilabel":
        raise UserError(f"{what} does not work with data.task=multilabel yet; leave it out for this competition")


def canonical_tags(raw: Sequence[str], sep: str) -> list[str]:
    """Tag lists split by `sep`, stripped, without repeats, sorted: one spelling per set of labels."""
    out = []
    for value in raw:
        tags = {t.strip() for t in str(value).split(sep if sep != " " else None) if t.strip()}
        out.append(" ".join(sorted(tags)))
    return out
