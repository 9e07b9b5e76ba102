"""The multi-label task: any number of labels per image, none included, a sigmoid per label."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from src.core.tasks.base import (
    Task,
    _one_column,
    _outside,
    _thresholds_given,
    class_columns,
    join_tags,
    range_unread,
    sorted_classes,
    split_tags,
)
from src.core.utils import UserError

if TYPE_CHECKING:  # torch loads when a method needs it
    import torch


class Multilabel(Task):
    """Any number of labels per image, none included (data.task=multilabel): a sigmoid per label."""

    name = "multilabel"
    noun = "labels"
    head = "sigmoid"
    label_form = "tags"
    space = "labels"
    decision = "labels"
    split_suffix = "_multilabel"
    split_meta = {"task": "multilabel"}
    empty_labels_ok = True
    report_metrics = ("f1_macro", "f1_micro", "roc_auc", "log_loss")
    aggregates = ("mean", "max")  # per label: max is the label shown in any of the answer's images

    @classmethod
    def check_data(cls, data) -> str | None:
        if data.layout not in ("csv", "coco", "pixels"):
            return ("data.task=multilabel reads its labels from train.csv (data.layout=csv: a tags column or "
                    "data.label_cols) or from a COCO-style JSON's annotations (data.layout=coco)")
        if data.layout == "coco" and data.label_cols is not None:
            return ("data.label_cols names 0/1 columns of train.csv, and data.layout=coco reads the labels from "
                    "data.annotations; set data.label_cols to null")
        return range_unread(cls.name, data)

    @classmethod
    def check_loss(cls, loss) -> str | None:
        return None if loss.name == "asl" else Task.check_loss(loss)

    @classmethod
    def check_ensemble(cls, ens) -> str | None:
        return None  # min_labels is this task's own

    def check_metric(self, name: str, fits: frozenset[str], n_classes: int) -> None:
        if "multilabel" not in fits:
            raise UserError(f"metric.name={name} does not score multi-label predictions; use one of f1_macro, "
                            "f1_micro, f2_samples, roc_auc, average_precision, log_loss or accuracy")

    def tags(self, label: str) -> list[str]:
        return split_tags(label)

    def canonical(self, label: str) -> str:
        """Space-separated labels as kept: sorted, once each (a space inside a label written as SPACE_IN_TAG)."""
        return join_tags(sorted(set(split_tags(label))))

    def class_list(self, labels: pd.Series, declared: Sequence[str] = ()) -> list[str]:
        """The sorted labels, every declared 0/1 column among them even if never positive (the
        submission needs every column)."""
        return sorted_classes(pd.concat([self.all_tags(labels), pd.Series(list(declared), dtype=str)]))

    def targets(self, labels: Iterable[str]) -> np.ndarray:
        labels = list(labels)
        index = self._index(labels)
        out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        for i, lab in enumerate(labels):
            out[i, [index[t] for t in self.tags(lab)]] = 1.0
        return out

    def split(self, df: pd.DataFrame, n_folds: int, seed: int, groups: pd.Series | None) -> np.ndarray:
        """Each label spread evenly over the folds (iterative stratification); labels positive in
        fewer images than folds are warned about (some folds validate none of them: their scores there are 0 or
        undefined), not refused: the submission still needs their columns."""
        y = self.targets(df["label"])
        counts = y.sum(0).astype(int)
        rare = [f"'{c}' {n}" for c, n in zip(self.classes, counts) if n < n_folds]
        if rare:
            warnings.warn(f"{len(rare)} labels are positive in fewer images than the {n_folds} folds (some folds "
                          f"validate none): {', '.join(rare[:10])}; they stay labels, learnt as rarely or never present",
                          UserWarning, stacklevel=2)
        return multilabel_folds(y, n_folds, seed, groups)

    def with_targets(self, df: pd.DataFrame) -> pd.DataFrame:
        self.targets(df["label"])  # every tag must be a label of the split; a row of 0/1 is no column
        return df

    def one_hot(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets)

    def check_thresholds(self, thresholds) -> None:
        _thresholds_given(self, thresholds)

    def teacher(self, probs: np.ndarray, temperature: float) -> np.ndarray:
        from scipy.special import expit, logit

        return expit(logit(np.clip(probs, 1e-6, 1 - 1e-6)) / temperature)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(np.asarray(logits, dtype=np.float64))

    def mixup_options(self, smoothing: float) -> dict:
        return {"label_smoothing": smoothing, "num_classes": self.n_outputs, "multi_label": True}

    def accuracy_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images with every label right (logit > 0 is p > 0.5)."""
        return ((logits > 0) == (y > 0.5)).all(1).sum()

    def validation_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        import torch
        import torch.nn.functional as F

        z = torch.from_numpy(np.asarray(logits)).float()
        return float(F.binary_cross_entropy_with_logits(z, torch.as_tensor(np.asarray(targets), dtype=torch.float32)))

    voting = ("soft", "logits", "rank")

    def blend(self, logits: np.ndarray, voting: str, w: np.ndarray) -> np.ndarray:
        """Per-label blend of sigmoid outputs: soft (mean probability), logits (sigmoid of the mean
        logit) or rank (each label's probabilities ranked over the images, 0..1, averaged)."""
        from scipy.special import expit
        from scipy.stats import rankdata

        if voting == "soft":
            return (w * expit(logits)).sum(0)
        if voting == "logits":
            return expit((w * logits).sum(0))
        if voting == "rank":
            return (w * (rankdata(logits, axis=1) - 1.0) / max(logits.shape[1] - 1, 1)).sum(0)
        raise UserError(f"ensemble.voting={voting} does not apply to multi-label predictions (a sigmoid per label); "
                        f"use one of {', '.join(self.voting)}")

    def blend_input(self, probs: np.ndarray) -> np.ndarray:
        """Each label's log-odds."""
        q = np.clip(probs, 1e-12, 1.0 - 1e-12)
        return np.log(q) - np.log1p(-q)

    def review(self, probs: np.ndarray, y: np.ndarray) -> dict:
        """The labels at 0.5, and the mean binary cross-entropy over the labels."""
        p = np.clip(probs, 1e-15, 1 - 1e-15)
        return {"predicted": self.predicted(probs), "loss": -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(1)}

    def invalid_rows(self, probs: np.ndarray, tol: float = 0.0, sum_tol: float = 1e-4) -> np.ndarray:
        return _outside(probs, tol)  # one probability per label: no sum

    def shown(self, probs: np.ndarray) -> str:
        return ", ".join(np.asarray(self.classes)[np.asarray(probs) >= 0.5])

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        names = np.asarray(self.classes, dtype=object)
        return np.array([join_tags(names[np.flatnonzero(r >= 0.5)]) for r in probs], dtype=object)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """The least sure label's max(p, 1 - p)."""
        return np.maximum(probs, 1.0 - probs).min(1)

    def counts(self, probs: np.ndarray, decisions: np.ndarray | None) -> np.ndarray:
        return (np.asarray(probs) >= 0.5).sum(0) if decisions is None else decisions.sum(0)

    def guess_metric(self, sample: pd.DataFrame, id_col: str) -> str:
        """Mean column ROC AUC where the sample holds one probability column per label (RANZCR, Plant
        Pathology), else the mean F1 over images of the labels written (Plant Pathology 2021, Planet's F2)."""
        return "roc_auc" if set(sample.columns) - {id_col} == set(self.classes) else "f1_samples"

    def resolve_format(self, fmt: str, sample: pd.DataFrame, id_col: str, metric: str) -> str:
        """tags (the labels above their thresholds, space-separated), or proba (one column per label)."""
        cols = [c for c in sample.columns if c != id_col]
        if fmt not in ("auto", "proba", "tags"):
            raise UserError(f"ensemble.format={fmt} writes one label per image; a multi-label submission is tags "
                            "(labels above their thresholds) or proba (one probability column per label)")
        if fmt == "proba" or (fmt == "auto" and class_columns(cols, self.classes, self.noun)):
            return "proba"
        spaced = [c for c in self.classes if " " in c]
        if spaced:
            raise UserError(f"labels {spaced[:3]} hold spaces, which a space-separated tags submission cannot tell "
                            "apart; set ensemble.format=proba (one probability column per label) if the sample "
                            "submission has those columns")
        if fmt == "tags":
            return fmt
        _one_column(cols)
        unseen = sorted({t for v in sample[cols[0]].astype(str) for t in v.split()} - set(self.classes))
        if unseen:
            raise UserError(f"the sample submission's placeholders hold tags {unseen[:5]} that no training image has, "
                            "so no model of this split can predict them; check data.label_sep, or set "
                            "ensemble.format=tags if the placeholders are not labels")
        return "tags"


def multilabel_folds(y: np.ndarray, n_folds: int, seed: int, groups: pd.Series | None = None) -> np.ndarray:
    """Fold index per row, each label spread evenly over the folds (iterative stratification,
    iterative-stratification's MultilabelStratifiedKFold); with groups, the groups are split by the
    union of their images' labels and every image follows its group."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if groups is not None:
        codes, uniq = pd.factorize(groups)
        if len(uniq) < n_folds:
            raise UserError(f"data.group_col has {len(uniq)} groups for {n_folds} folds; lower data.n_folds or use "
                            "a finer group column")
        per_group = np.zeros((len(uniq), y.shape[1]))
        np.maximum.at(per_group, codes, y)
        return multilabel_folds(per_group, n_folds, seed)[codes]
    if len(y) < n_folds:
        raise UserError(f"{len(y)} images cannot fill {n_folds} folds; lower data.n_folds")
    fold = np.full(len(y), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold[val_idx] = k
    return fold
