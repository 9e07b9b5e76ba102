"""The task (data.task): what one image's label is, and what every stage does with it.

    multiclass   one class per image (softmax over the classes); the default
    binary       one of two classes (softmax over both; the submission's probability is the second's)
    multilabel   any number of labels per image, none included (one sigmoid per label)
    ordinal      one grade per image, integer grades in order (APTOS's 0-4): a regression head (one
                 output, loss.name=mse or smooth_l1) or a softmax over the grades (ce, focal), read
                 as a grade score either way (the regression output, or the expected grade)

Top-k (MAP@k, Humpback, Happywhale) is not a task of its own: it is how a multi-class task decodes
when the metric is map@k or the sample submission holds several ranked labels (its `formats`).

One class per kind, each answering every stage's question, so that no stage tests the kind:
how labels become targets, the head's width and activation, the training hits and the validation
loss, the mixup targets, which metrics fit, how probabilities are checked, re-expressed and
decided, which submission formats it writes, and its nouns in messages. Where the answer is code
that lives in a higher layer (the loss modules, the fold splitters, the blend rules, the threshold
fitters), the task names its role (`head`, `splitter`, `space`, `decision`, `label_form`) and that
stage keeps one table from role to function; a new kind that reuses the roles is one class here.

An ordinal prediction travels as the grade distribution whose mean is its score, clipped to the
grades: a score of 2.3 is 0.7 on grade 2 and 0.3 on grade 3. Its argmax is the rounded score, its
mean the score, so metrics on decisions read it as they read class probabilities, and blends average
scores. Thresholds between grades (fitted on OOF) decide from the mean instead of rounding.

Labels are kept as text: a class name, or for multi-label tasks the image's labels space-separated
in the class order ("" for none). A task with no classes yet (`task_of(cfg)`, the kind-only form)
answers what the folds and tables ask before the labels are read; `with_classes` completes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from src.core.utils import UserError, softmax

if TYPE_CHECKING:  # torch and scipy load when a method needs them: a command's --help imports neither
    import torch

REGRESSION_LOSSES = ("mse", "smooth_l1")  # loss.name values that give an ordinal task a one-output head
_MAP_AT = re.compile(r"^map@(\d+)$")
PROBABILITY_METRICS = ("roc_auc", "log_loss", "average_precision")


@dataclass(frozen=True)
class Task:
    """One class per image, a softmax over the classes (data.task=multiclass)."""

    classes: tuple[str, ...] = ()
    regression: bool = False  # ordinal only: a one-output head trained on the grade (loss.name mse, smooth_l1)

    name: ClassVar[str] = "multiclass"
    noun: ClassVar[str] = "classes"  # what the class list holds, for messages
    head: ClassVar[str] = "softmax"  # models/losses.py: the loss family loss.name picks from
    splitter: ClassVar[str] = "stratified"  # data/folds.py: how the folds are drawn
    label_form: ClassVar[str] = "one"  # data/tables.py, evaluation/scoring.py: one label per row, or tags
    space: ClassVar[str] = "classes"  # evaluation/blending.py, analysis: what a blend averages and a review shows
    decision: ClassVar[str] = "argmax"  # evaluation/decoding.py: how the submission's decisions are fitted on OOF
    split_suffix: ClassVar[str] = ""  # the folds file's name: tag sets are a split of their own
    split_meta: ClassVar[dict] = {}  # what the folds file's .json records of the task
    empty_labels_ok: ClassVar[bool] = False  # a submission cell may be empty (an image with no label)
    report_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "f1_macro", "log_loss", "roc_auc")
    prob_word: ClassVar[str] = "probabilities"  # what the _probs.csv beside a submission holds

    # ------------------------------------------------------------------ construction and checks

    def __post_init__(self):
        if self.regression:
            raise UserError(f"a regression loss (loss.name={'/'.join(REGRESSION_LOSSES)}) predicts a grade, which needs "
                            f"data.task=ordinal; this competition is {self.name}, so use loss.name=ce or focal")

    def with_classes(self, classes: Iterable[str]) -> Task:
        """This task over `classes` (checked: two for binary, integer grades for ordinal)."""
        return type(self)(tuple(classes), self.regression)

    @classmethod
    def check_data(cls, data) -> str | None:
        """Why the data section cannot feed this task (a sentence), or None."""
        if data.label_cols is not None:
            return "data.label_cols (one 0/1 column per label) needs data.task=multilabel and data.layout=csv"
        return None

    @classmethod
    def check_loss(cls, loss) -> str | None:
        """Why the loss section does not fit this task (a sentence), or None."""
        if loss.name == "asl":
            return ("loss.name=asl is the asymmetric loss of multi-label tasks (data.task=multilabel); "
                    "use ce or focal")
        if loss.name in REGRESSION_LOSSES:
            return f"loss.name={loss.name} regresses a grade, which needs data.task=ordinal; use ce or focal"
        return None

    def check_metric(self, name: str, fits: frozenset[str], n_classes: int) -> None:
        """One sentence when a metric that scores the tasks `fits` cannot score this one over `n_classes`."""
        if not fits & {"multiclass", "binary", "ordinal"}:
            raise UserError(f"metric.name={name} scores multi-label tasks (several labels per image), and this "
                            "competition has one label per image; use f1_macro, f1_micro or f1_weighted")
        if fits == {"binary"} and n_classes != 2:
            raise UserError(f"metric.name={name} scores binary tasks, and this competition has {n_classes} "
                            "classes; use roc_auc (one-vs-rest) or average_precision")

    def describe(self) -> str:
        """'10 classes', '5 grades (a regression head)': what a fold trains, for its first line."""
        return f"{len(self.classes)} {self.noun}"

    # ------------------------------------------------------------------ labels and targets

    def tags(self, label: str) -> list[str]:
        """A label as the list of class names it holds (one, or for multi-label any number)."""
        return [str(label)]

    def all_tags(self, labels: Iterable[str]) -> pd.Series:
        """Every class name the labels hold, one per row (for the class list and its counts)."""
        return pd.Series([t for lab in labels for t in self.tags(lab)], dtype=str)

    def _index(self, labels: list[str]) -> dict[str, int]:
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({t for lab in labels for t in self.tags(lab)} - set(index))
        if unknown:
            raise UserError(f"labels {unknown[:8]} are not in the class list {list(self.classes)[:10]}; delete the "
                            "folds file to split again, or fix the labels")
        return index

    def targets(self, labels: Iterable[str]) -> np.ndarray:
        """What the loss reads: class indices (N,) int64 (multi-label: a 0/1 matrix (N, L) float32)."""
        labels = list(labels)
        index = self._index(labels)
        return np.array([index[str(lab)] for lab in labels], dtype=np.int64)

    def with_targets(self, df: pd.DataFrame) -> pd.DataFrame:
        """The table with its `target` column (the class index), where one number per row can hold it."""
        df = df.copy()
        df["target"] = self.targets(df["label"])
        return df

    def one_hot(self, targets: np.ndarray) -> np.ndarray:
        """Targets as a probability row per image (N, C), the form soft targets are mixed in."""
        return np.eye(len(self.classes))[np.asarray(targets)]

    def teacher(self, probs: np.ndarray, temperature: float) -> np.ndarray:
        """A teacher's probabilities softened by `temperature` (distillation)."""
        return softmax(np.log(np.clip(probs, 1e-12, 1.0)) / temperature)

    def refuse_soft_targets(self, fix: str) -> None:
        """One sentence ending in `fix` where soft targets (distillation, soft pseudo-labels) cannot
        train this task."""

    def check_thresholds(self, thresholds) -> None:
        """One sentence where this task's decisions need thresholds fitted on OOF and none are given."""

    # ------------------------------------------------------------------ the head

    @property
    def n_outputs(self) -> int:
        """Width of the model's head: one per class or label, or one grade score."""
        return len(self.classes)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) from logits: softmax over the classes, or a sigmoid per label."""
        return softmax(np.asarray(logits, dtype=np.float64))

    def from_classifier(self, probs: np.ndarray) -> np.ndarray:
        """A classifier's class probabilities in this task's form (ordinal: as the grade distribution
        of their expected grade)."""
        return probs

    def mixup_options(self, smoothing: float) -> dict:
        """timm Mixup's label arguments for this head."""
        return {"label_smoothing": smoothing, "num_classes": self.n_outputs, "multi_label": False}

    def mixup_target(self, y: torch.Tensor) -> torch.Tensor:
        """The batch's targets as Mixup mixes them."""
        return y

    def accuracy_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The labels training accuracy counts against: probability targets (soft_targets.py) by their argmax."""
        return y.argmax(1) if y.ndim == 2 else y

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images of a training batch predicted right (the argmax class), on the device."""
        return (logits.argmax(1) == y).sum()

    def validation_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """The unweighted, unsmoothed loss of validation logits (cross-entropy)."""
        import torch
        import torch.nn.functional as F

        z = torch.from_numpy(np.asarray(logits)).float()
        return float(F.cross_entropy(z, torch.tensor(np.asarray(targets), dtype=torch.long)))

    # ------------------------------------------------------------------ predictions and decisions

    def invalid_rows(self, probs: np.ndarray, tol: float = 0.0, sum_tol: float = 1e-4) -> np.ndarray:
        """Rows (N,) that are no prediction of this task: non-finite, outside [-tol, 1 + tol] or, one
        label per image, not summing to 1 within `sum_tol`."""
        return _outside(probs, tol) | ~np.isclose(np.nan_to_num(probs).sum(1), 1.0, atol=sum_tol)

    def shown(self, probs: np.ndarray) -> str:
        """What one image's probabilities (C,) predict, as text."""
        return self.classes[int(np.argmax(probs))]

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        """Each image's predicted labels, as text (N,)."""
        return np.asarray(self.classes, dtype=object)[np.asarray(probs).argmax(1)]

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """How sure each prediction is (N,), for pseudo-labels: the top probability."""
        return np.asarray(probs).max(1)

    def counts(self, probs: np.ndarray, decisions: np.ndarray | None) -> np.ndarray:
        """Images predicted as each class (C,), from the decisions where there are any."""
        picked = np.asarray(probs).argmax(1) if decisions is None else decisions
        return np.bincount(picked, minlength=len(self.classes))

    def resolve_format(self, fmt: str, sample: pd.DataFrame, id_col: str, metric: str) -> str:
        """The submission format: `fmt`, or for auto what the sample submission and metric imply: one
        column per class -> proba; several ranked labels per placeholder or a map@k metric -> topk;
        two classes and a probability metric or fractional placeholders -> binary; else label."""
        cols = [c for c in sample.columns if c != id_col]
        if fmt != "auto":
            return fmt
        if set(cols) == set(self.classes):
            return "proba"
        _one_column(cols)
        if _MAP_AT.match(metric) or (len(sample) and (_words(sample, cols[0]) > 1).mean() > 0.5):
            return "topk"
        values = pd.to_numeric(sample[cols[0]], errors="coerce")
        fractional = values.notna().all() and ((values % 1) != 0).any()
        if len(self.classes) == 2 and (metric in PROBABILITY_METRICS or metric.startswith("pauc") or fractional):
            return "binary"
        return "label"


def _thresholds_given(task: Task, thresholds) -> None:
    if thresholds is None:
        raise UserError(f"a {task.name} blend needs thresholds fitted on the OOF report (or given, in a Kaggle "
                        "kernel); keep the report on")


def _outside(probs: np.ndarray, tol: float) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return ~np.isfinite(probs).all(1) | (probs < -tol).any(1) | (probs > 1 + tol).any(1)


def _words(sample: pd.DataFrame, col: str) -> pd.Series:
    return sample[col].astype(str).str.split().str.len()


FORMATS = "label, index, proba, binary, topk, tags"


def _one_column(cols: list[str]) -> None:
    if len(cols) != 1:
        raise UserError(f"cannot tell the submission format from the sample submission's columns {cols[:6]}; "
                        f"set ensemble.format to one of {FORMATS}")


class Binary(Task):
    """One of two classes (data.task=binary): the softmax over both; its probability is the second's."""

    name = "binary"

    def __post_init__(self):
        super().__post_init__()
        if self.classes and len(self.classes) != 2:
            raise UserError(f"data.task=binary needs exactly 2 classes and the labels hold {len(self.classes)} "
                            f"({list(self.classes)[:6]}); use data.task=multiclass")


class Multilabel(Task):
    """Any number of labels per image, none included (data.task=multilabel): a sigmoid per label."""

    name = "multilabel"
    noun = "labels"
    head = "sigmoid"
    splitter = "multilabel"
    label_form = "tags"
    space = "labels"
    decision = "labels"
    split_suffix = "_multilabel"
    split_meta = {"task": "multilabel"}
    empty_labels_ok = True
    report_metrics = ("f1_macro", "f1_micro", "roc_auc", "log_loss")

    @classmethod
    def check_data(cls, data) -> str | None:
        if data.layout != "csv":
            return "data.task=multilabel reads its labels from train.csv (data.layout=csv): a tags column or data.label_cols"
        return None

    @classmethod
    def check_loss(cls, loss) -> str | None:
        return None if loss.name == "asl" else Task.check_loss(loss)

    def check_metric(self, name: str, fits: frozenset[str], n_classes: int) -> None:
        if "multilabel" not in fits:
            raise UserError(f"metric.name={name} does not score multi-label predictions; use one of f1_macro, "
                            "f1_micro, f2_samples, roc_auc, average_precision, log_loss or accuracy")

    def tags(self, label: str) -> list[str]:
        return str(label).split()

    def targets(self, labels: Iterable[str]) -> np.ndarray:
        labels = list(labels)
        index = self._index(labels)
        out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        for i, lab in enumerate(labels):
            out[i, [index[t] for t in self.tags(lab)]] = 1.0
        return out

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

    def invalid_rows(self, probs: np.ndarray, tol: float = 0.0, sum_tol: float = 1e-4) -> np.ndarray:
        return _outside(probs, tol)  # one probability per label: no sum

    def shown(self, probs: np.ndarray) -> str:
        return " ".join(np.asarray(self.classes)[np.asarray(probs) >= 0.5])

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        names = np.asarray(self.classes, dtype=object)
        return np.array([" ".join(names[np.flatnonzero(r >= 0.5)]) for r in probs], dtype=object)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """The least sure label's max(p, 1 - p)."""
        return np.maximum(probs, 1.0 - probs).min(1)

    def counts(self, probs: np.ndarray, decisions: np.ndarray | None) -> np.ndarray:
        return (np.asarray(probs) >= 0.5).sum(0) if decisions is None else decisions.sum(0)

    def resolve_format(self, fmt: str, sample: pd.DataFrame, id_col: str, metric: str) -> str:
        """tags (the labels above their thresholds, space-separated), or proba (one column per label)."""
        cols = [c for c in sample.columns if c != id_col]
        if fmt not in ("auto", "proba", "tags"):
            raise UserError(f"ensemble.format={fmt} writes one label per image; a multi-label submission is tags "
                            "(labels above their thresholds) or proba (one probability column per label)")
        if fmt != "auto":
            return fmt
        if set(cols) == set(self.classes):
            return "proba"
        _one_column(cols)
        unseen = sorted({t for v in sample[cols[0]].astype(str) for t in v.split()} - set(self.classes))
        if unseen:
            raise UserError(f"the sample submission's placeholders hold tags {unseen[:5]} that no training image has, "
                            "so no model of this split can predict them; check data.label_sep, or set "
                            "ensemble.format=tags if the placeholders are not labels")
        return "tags"


class Ordinal(Task):
    """One integer grade per image, in order (data.task=ordinal): a regression head or a softmax over
    the grades, read as a grade score either way."""

    name = "ordinal"
    noun = "grades"
    space = "grades"
    decision = "grades"
    report_metrics = ("accuracy", "f1_macro", "qwk")
    prob_word = "grade distributions"

    def __post_init__(self):
        bad = [c for c in self.classes if not _is_int(c)]
        if bad:
            raise UserError(f"data.task=ordinal needs integer grades as labels, and the labels hold {bad[:5]}; "
                            "map them to 0, 1, 2, ... in their order, or use data.task=multiclass")
        if self.classes and len(self.classes) < 2:
            raise UserError(f"data.task=ordinal needs at least 2 grades, and the labels hold {list(self.classes)}")

    @property
    def head(self) -> str:  # type: ignore[override]
        return "score" if self.regression else "softmax"

    @classmethod
    def check_loss(cls, loss) -> str | None:
        if loss.distill_from is not None:
            return ("loss.distill_from mixes a teacher's class probabilities into the targets, and an ordinal task "
                    "trains on its grades; set it to null")
        return None if loss.name in REGRESSION_LOSSES else Task.check_loss(loss)

    def check_metric(self, name: str, fits: frozenset[str], n_classes: int) -> None:
        if "ordinal" not in fits:
            raise UserError(f"metric.name={name} does not score ordinal predictions (a grade per image, not class "
                            "probabilities); use qwk, accuracy, balanced_accuracy or f1_macro")
        super().check_metric(name, fits, n_classes)

    def describe(self) -> str:
        return super().describe() + (" (a regression head)" if self.regression else "")

    def check_thresholds(self, thresholds) -> None:
        _thresholds_given(self, thresholds)

    def refuse_soft_targets(self, fix: str) -> None:
        raise UserError(f"an ordinal task trains on its grades, and distillation and soft pseudo-labels mix class "
                        f"probabilities: {fix}")

    @property
    def n_outputs(self) -> int:
        return 1 if self.regression else len(self.classes)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        return grade_probs(grade_scores(logits), len(self.classes))

    def from_classifier(self, probs: np.ndarray) -> np.ndarray:
        return grade_probs(expected_grade(probs), len(self.classes))

    def mixup_options(self, smoothing: float) -> dict:
        if not self.regression:
            return super().mixup_options(smoothing)
        return {"label_smoothing": 0.0, "num_classes": 1, "multi_label": True}  # the grade as one dense column

    def mixup_target(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, None].float() if self.regression else y

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A regression head's rounded score, clipped to the grades; a softmax head's argmax."""
        if not self.regression:
            return super().hits(logits, y)
        return (logits[:, 0].float().round().clamp(0, len(self.classes) - 1) == y).sum()

    def validation_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """A regression head's mean squared error of the grade; a softmax head's cross-entropy."""
        if not self.regression:
            return super().validation_loss(logits, targets)
        import torch
        import torch.nn.functional as F

        z = torch.from_numpy(np.asarray(logits)).float()
        return float(F.mse_loss(z[:, 0], torch.as_tensor(np.asarray(targets), dtype=torch.float32)))

    def resolve_format(self, fmt: str, sample: pd.DataFrame, id_col: str, metric: str) -> str:
        """label (the grade) or index (its position among the grades)."""
        cols = [c for c in sample.columns if c != id_col]
        if fmt not in ("auto", "label", "index"):
            raise UserError(f"ensemble.format={fmt} does not write grades; an ordinal submission is label (the grade) "
                            "or index (its position among the grades)")
        if len(cols) != 1:
            raise UserError(f"an ordinal submission holds one grade column, and the sample submission has {cols[:6]}; "
                            "check data.sample_submission")
        return "label" if fmt == "auto" else fmt


TASKS: dict[str, type[Task]] = {t.name: t for t in (Task, Binary, Multilabel, Ordinal)}
KINDS = tuple(TASKS)


def task_of(cfg, classes: Iterable[str] | None = None) -> Task:
    """The task of a config (data.task, and loss.name for an ordinal head), over `classes` or, before
    the labels are read, over none (the kind-only form)."""
    return make_task(cfg.data.task, () if classes is None else classes, cfg.loss.name in REGRESSION_LOSSES)


def make_task(kind: str, classes: Iterable[str] = (), regression: bool = False) -> Task:
    """The task of kind `kind` (a data.task value) over `classes`."""
    if kind not in TASKS:
        raise UserError(f"data.task={kind} is not a task; use one of {', '.join(KINDS)}")
    return TASKS[kind](tuple(classes), regression)


def task_for_targets(y: np.ndarray) -> Task:
    """The task a target array implies, for metrics scored without a config (kind-only): a 0/1
    matrix (N, L) is multi-label, class indices (N,) single-label."""
    return Multilabel() if np.ndim(y) == 2 else Task()


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
    return softmax(z) @ np.arange(z.shape[-1], dtype=np.float64)


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


def canonical_tags(raw: Sequence[str], sep: str) -> list[str]:
    """Tag lists split by `sep`, stripped, without repeats, sorted: one spelling per set of labels."""
    out = []
    for value in raw:
        tags = {t.strip() for t in str(value).split(sep if sep != " " else None) if t.strip()}
        out.append(" ".join(sorted(tags)))
    return out
