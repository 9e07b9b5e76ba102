"""The multi-class task (the default, and what every kind inherits) and the binary one; see
src/core/tasks/__init__.py for what a task answers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from src.core.utils import UserError, counted, softmax

if TYPE_CHECKING:  # torch and scipy load when a method needs them: a command's --help imports neither
    import torch

REGRESSION_LOSSES = ("mse", "smooth_l1")  # loss.name values that give an ordinal task a one-output head
MAP_AT = re.compile(r"^map@(\d+)$")  # a MAP@k metric: its k
# Metrics that read a binary task's probability (pauc@0.9, pfbeta@2: the name before "@"); the metric
# registry (src.evaluation.metrics) is checked against this list by tests/evaluation/test_competition_metrics.py.
# src.probe's and --stack's scikit-learn models, by what they fit: the words of a refusal on the other kind of targets
SECOND_LEVEL_FITS = {"logreg": "a classifier of class probabilities", "rf": "a classifier of class probabilities",
                     "svm": "a classifier of class probabilities", "ridge": "a linear regression of values"}
PROBABILITY_METRICS = ("roc_auc", "log_loss", "average_precision", "weighted_auc", "pauc", "pfbeta")


@dataclass(frozen=True)
class Task:
    """One class per image, a softmax over the classes (data.task=multiclass)."""

    classes: tuple[str, ...] = ()
    regression: bool = False  # ordinal only: a one-output head trained on the grade (loss.name mse, smooth_l1)

    name: ClassVar[str] = "multiclass"
    noun: ClassVar[str] = "classes"  # what the class list holds, for messages
    head: ClassVar[str] = "softmax"  # models/losses.py: the loss family loss.name picks from
    label_form: ClassVar[str] = "one"  # data/tables.py, evaluation/scoring.py: one label per row, or tags
    space: ClassVar[str] = "classes"  # training, analysis: how OOF confusion is shown (a matrix, or per-label scores)
    decision: ClassVar[str] = "argmax"  # evaluation/decoding.py: how the submission's decisions are fitted on OOF
    split_suffix: ClassVar[str] = ""  # the folds file's name: tag sets are a split of their own
    split_meta: ClassVar[dict] = {}  # what the folds file's .json records of the task
    empty_labels_ok: ClassVar[bool] = False  # a submission cell may be empty (an image with no label)
    report_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "f1_macro", "log_loss", "roc_auc")
    summary_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "f1_macro")  # what every report quotes beside the metric
    prob_word: ClassVar[str] = "probabilities"  # what the _probs.csv beside a submission holds
    first_loss: ClassVar[str] = "ce"  # src.init's loss.name where the recipe's does not train this kind
    aggregates: ClassVar[tuple[str, ...]] = ("mean",)  # data.aggregate values that keep an answer's row valid

    # ------------------------------------------------------------------ construction and checks

    def __post_init__(self):
        if self.regression:
            raise UserError(f"a regression loss (loss.name={'/'.join(REGRESSION_LOSSES)}) predicts a grade, which needs "
                            f"data.task=ordinal; this competition is {self.name}, so use loss.name=ce or focal")

    @classmethod
    def from_config(cls, cfg, classes: Iterable[str] | None) -> Task:
        """The task of a config over `classes` (None: the kind-only form, before the labels are read)."""
        return cls(tuple(classes or ()), cfg.loss.name in REGRESSION_LOSSES)

    def with_classes(self, classes: Iterable[str]) -> Task:
        """This task over `classes` (checked: two for binary, integer grades for ordinal)."""
        return type(self)(tuple(classes), self.regression)

    @classmethod
    def check_data(cls, data) -> str | None:
        """Why the data section cannot feed this task (a sentence), or None. data.label_cols here are
        one-hot columns (Plant Pathology 2020's healthy, multiple_diseases, rust, scab): exactly one 1
        a row, the class the column's name."""
        if data.label_cols is not None and data.layout != "csv":
            return (f"data.label_cols names 0/1 columns of train.csv, and data.layout={data.layout} reads no such "
                    "table; set data.label_cols to null or data.layout=csv")
        return range_unread(cls.name, data)

    @classmethod
    def check_loss(cls, loss) -> str | None:
        """Why the loss section does not fit this task (a sentence), or None."""
        if loss.name == "asl":
            return ("loss.name=asl is the asymmetric loss of multi-label tasks (data.task=multilabel); "
                    "use ce or focal")
        if loss.name in REGRESSION_LOSSES:
            return f"loss.name={loss.name} regresses a grade, which needs data.task=ordinal; use ce or focal"
        if loss.name == "bce":
            return ("loss.name=bce trains on a value scaled to [0, 1], which needs data.task=regression; use ce or "
                    "focal")
        return None

    @classmethod
    def check_ensemble(cls, ens) -> str | None:
        """Why the ensemble section does not fit this task (a sentence), or None: a key only another
        kind reads would be ignored without a word."""
        if ens.min_labels:
            return (f"ensemble.min_labels={ens.min_labels} gives an image with no label its most probable one, which "
                    f"only a multi-label task (data.task=multilabel) decides; this competition is {cls.name}, so set "
                    "ensemble.min_labels=0")
        return None

    @classmethod
    def check_aggregate(cls, how: str) -> str | None:
        """Why data.aggregate=`how` cannot combine an answer's images under this task (a sentence), or None:
        the highest probability of each class over the images sums to more than 1, no distribution."""
        if how not in cls.aggregates:
            return (f"data.aggregate={how} takes each class's highest probability over an answer's images, which is "
                    f"no distribution over the classes of a {cls.name} answer; use data.aggregate=mean")
        return None

    def check_metric(self, name: str, fits: frozenset[str], n_classes: int) -> None:
        """One sentence when a metric that scores the tasks `fits` cannot score this one over `n_classes`."""
        if fits == {"regression"}:
            raise UserError(f"metric.name={name} scores a value per image (data.task=regression), and this "
                            f"competition is {self.name}; use one of {', '.join(self.report_metrics)}")
        if not fits & {"multiclass", "binary", "ordinal"}:
            raise UserError(f"metric.name={name} scores multi-label tasks (several labels per image), and this "
                            "competition has one label per image; use f1_macro, f1_micro or f1_weighted")
        if fits == {"binary"} and n_classes != 2:
            raise UserError(f"metric.name={name} scores binary tasks, and this competition has {n_classes} "
                            "classes; use roc_auc (one-vs-rest) or average_precision")

    def check_stage(self, stage: str) -> None:
        """One sentence where this task cannot go through `stage` (pseudo, probe, stacking, report)."""

    # src.probe's models (the default first) and src.ensemble --stack's stackers that fit this task's targets
    probe_models: ClassVar[tuple[str, ...]] = ("logreg", "rf", "svm")
    probe_scores: ClassVar[tuple[str, ...]] = ()  # what src.probe scores beyond the metric and summary_metrics
    stackers: ClassVar[tuple[str, ...]] = ("logreg",)

    def check_second_level(self, flag: str, name: str) -> None:
        """One sentence where `name` (--classifier of src.probe, or --stack) does not fit this task's targets."""
        offered = self.probe_models if flag == "--classifier" else self.stackers
        if name not in offered:
            raise UserError(f"{flag} {name} is {SECOND_LEVEL_FITS[name]} and does not fit this competition's "
                            f"{self.name} targets; use {flag} {' or '.join(offered)}")

    def describe(self) -> str:
        """'10 classes', '5 grades (a regression head)': what a fold trains, for its first line."""
        return f"{len(self.classes)} {self.noun}"

    # ------------------------------------------------------------------ labels, targets and folds

    def tags(self, label: str) -> list[str]:
        """A label as the list of class names it holds (one, or for multi-label any number)."""
        return [str(label)]

    def canonical(self, label: str) -> str:
        """A label as the training table keeps it (a reviewed label, say)."""
        return str(label).strip()

    def all_tags(self, labels: Iterable[str]) -> pd.Series:
        """Every class name the labels hold, one per row (for the class list and its counts)."""
        return pd.Series([t for lab in labels for t in self.tags(lab)], dtype=str)

    def class_list(self, labels: pd.Series, declared: Sequence[str] = ()) -> list[str]:
        """The class list the training labels imply, in its fixed order (regression: its one column);
        `declared` one-hot columns (data.label_cols) are the class list in train.csv's order, every
        label being one of them (the reader checked)."""
        return list(declared) if declared else sorted_classes(self.all_tags(labels))

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

    def split(self, df: pd.DataFrame, n_folds: int, seed: int, groups: pd.Series | None) -> np.ndarray:
        """Fold index per row of the training table: stratified by label (scikit-learn's
        StratifiedKFold, or StratifiedGroupKFold on `groups`)."""
        return assign_folds(df, n_folds, seed, groups is not None)  # groups: the table's own group column

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

    # ------------------------------------------------------------------ blends and reviews

    voting: ClassVar[tuple[str, ...]] = ("soft", "geometric", "logits", "hard", "rank")

    def blend(self, logits: np.ndarray, voting: str, w: np.ndarray) -> np.ndarray:
        """K predictors' logits (K, N, C) blended into probabilities (N, C) with weights w (K, 1, 1).

        soft: weighted mean of probabilities; geometric: of log-probabilities, renormalized;
        logits: softmax of the weighted mean logit; hard: weighted share of argmax votes; rank: each
        predictor's probabilities turned into per-class ranks over the N images (scaled to 0..1),
        weighted mean, rows renormalized to sum 1 (for two classes this is exactly the rank average
        of the second class, what AUC-type metrics score; the argmax of ranks is not the argmax of
        probabilities, so it is no rule for accuracy-type metrics)."""
        if voting == "soft":
            return (w * softmax(logits)).sum(0)
        if voting == "geometric":
            return softmax((w * np.log(np.clip(softmax(logits), 1e-12, 1.0))).sum(0))
        if voting == "logits":
            return softmax((w * logits).sum(0))
        if voting == "hard":
            votes = np.eye(logits.shape[2])[logits.argmax(2)]  # (K, N, C)
            return (w * votes).sum(0)
        if voting == "rank":
            from scipy.stats import rankdata

            n = logits.shape[1]
            ranks = (rankdata(softmax(logits), axis=1) - 1.0) / max(n - 1, 1)  # (K, N, C), ties averaged
            score = (w * ranks).sum(0) + 1e-9  # a row ranked last in every class keeps a defined share
            return score / score.sum(1, keepdims=True)
        raise ValueError(voting)

    def check_voting(self, voting: str) -> None:
        """The one sentence `blend` says of a voting rule this task does not take, before anything is predicted."""
        if voting not in self.voting:
            self.blend(np.zeros((1, 0, self.n_outputs)), voting, np.ones((1, 1, 1)))

    def aggregate(self, probs: np.ndarray, codes: np.ndarray, n: int, how: str) -> np.ndarray:
        """Images' predictions (N, C) combined into their answers' (n, C): `codes` (N,) is each image's answer
        (0..n-1), `how` data.aggregate (mean of the rows: still distributions over the classes)."""
        return reduce_rows(probs, codes, n, how)

    def blend_input(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) back as what `blend` reads: log-probabilities (softmax ignores per-row shifts)."""
        return np.log(np.clip(probs, 1e-12, 1.0))

    def right(self, review: pd.DataFrame) -> np.ndarray:
        """Which rows of the OOF review (suspects: predicted, label, loss) the report shows as right (N,) bool."""
        return (review["predicted"] == review["label"]).to_numpy()

    def stack_input(self, logits: np.ndarray) -> np.ndarray:
        """A member's blend input (N, C) as the stacker reads it: log-probabilities as they are."""
        return logits

    def review(self, probs: np.ndarray, y: np.ndarray) -> dict:
        """The OOF review's columns of each image: the predicted class, its probability, the label's,
        and -log p of the label."""
        rows, names = np.arange(len(y)), np.asarray(self.classes, dtype=object)
        pred, p_label = probs.argmax(1), probs[rows, y]
        return {"predicted": names[pred], "prob": probs[rows, pred], "prob_label": p_label,
                "loss": -np.log(np.clip(p_label, 1e-15, 1.0))}

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
        if fmt == "value":
            raise UserError(f"ensemble.format=value writes a regression's predicted number, and this competition is "
                            f"{self.name}; use auto or one of {', '.join(f for f in FORMATS if f != 'value')}")
        if fmt != "auto":
            return fmt
        if class_columns(cols, self.classes, self.noun):
            return "proba"
        _one_column(cols)
        if MAP_AT.match(metric) or (len(sample) and (placeholder_words(sample, cols[0]) > 1).mean() > 0.5):
            return "topk"
        values = pd.to_numeric(sample[cols[0]], errors="coerce")
        fractional = values.notna().all() and ((values % 1) != 0).any()
        if len(self.classes) == 2 and (metric.split("@")[0] in PROBABILITY_METRICS or fractional):
            return "binary"
        return "label"


    def label_summary(self, labels: pd.Series, shown: int = 12) -> str:
        """'10 classes: 0 (143), 1 (146), ...': what the training labels hold, for src.init's summary."""
        counts = self.all_tags(labels).value_counts()
        listed = ", ".join(f"{c} ({counts.get(c, 0):,})" for c in self.classes[:shown])
        return f"{self.describe()}: {listed}" + (" ..." if len(self.classes) > shown else "")

    def guess_metric(self, sample: pd.DataFrame, id_col: str) -> str:
        """The metric competitions of this kind most often use, for src.init where the competition is not
        in its table: MAP@k for placeholders of k ranked labels, log loss for one probability column per
        class, else accuracy."""
        cols = [c for c in sample.columns if c != id_col]
        if set(cols) == set(self.classes):
            return "log_loss"
        words = placeholder_words(sample, cols[0]) if len(cols) == 1 and len(sample) else pd.Series([1])
        return f"map@{int(words.max())}" if (words > 1).mean() > 0.5 else "accuracy"


def reduce_rows(x: np.ndarray, codes: np.ndarray, n: int, how: str) -> np.ndarray:
    """Rows (N, C) reduced per code (N,) into (n, C): their mean, or their maximum (data.aggregate)."""
    x, codes = np.asarray(x, dtype=np.float64), np.asarray(codes)
    if how == "max":
        out = np.full((n, x.shape[1]), -np.inf)
        np.maximum.at(out, codes, x)
        return out
    out = np.zeros((n, x.shape[1]))
    np.add.at(out, codes, x)
    return out / np.bincount(codes, minlength=n)[:, None]


def _thresholds_given(task: Task, thresholds) -> None:
    if thresholds is None:
        raise UserError(f"a {task.name} blend needs thresholds fitted on the OOF report (or given, in a Kaggle "
                        "kernel); keep the report on")


def _outside(probs: np.ndarray, tol: float) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return ~np.isfinite(probs).all(1) | (probs < -tol).any(1) | (probs > 1 + tol).any(1)


def placeholder_words(sample: pd.DataFrame, col: str) -> pd.Series:
    """How many space-separated words each of a sample submission's placeholders holds."""
    return sample[col].astype(str).str.split().str.len()


# ensemble.format's values besides auto: the config's schema, the --format choices and the messages read this one list
FORMATS = ("label", "index", "proba", "binary", "topk", "tags", "value")


def sorted_classes(labels: pd.Series) -> list[str]:
    """Fixed class order: numeric labels sorted as numbers, others as strings."""
    uniq = list(pd.unique(labels.astype(str)))
    try:
        return sorted(uniq, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(uniq)


def range_unread(kind: str, data) -> str | None:
    """Why data.target_range would be ignored (only a regression task reads it), or None."""
    if data.target_range is not None:
        return f"data.target_range is read by data.task=regression only, and this competition is {kind}; set it to null"
    return None


def class_columns(cols: list[str], classes: Sequence[str], noun: str) -> bool:
    """Whether the sample's prediction columns are the classes or, with two or more, some of them
    (a graded subset: only those are written and scored); a sample holding others among them is
    refused in one sentence, since nothing predicts those."""
    known = [c for c in cols if c in classes]
    if len(cols) < 2 or not known:
        return set(cols) == set(classes) and bool(cols)
    unknown = [c for c in cols if c not in classes]
    if unknown:
        raise UserError(f"the sample submission's columns {unknown[:5]} are not {noun} of the split "
                        f"({list(classes)[:6]}), so no model of it predicts them; check data.label_cols and that "
                        "the sample belongs to this competition")
    return True


def note_left_out(cols: list[str], classes: list[str]) -> list[str]:
    """The classes (labels) the sample's probability columns leave out, said in one line: neither
    written nor scored (a graded subset)."""
    left = [c for c in classes if c not in cols]
    if left:
        print(f"note: the sample submission holds {len(cols)} of the {len(classes)} classes; left out of the file and "
              f"its score: {', '.join(left[:10])}" + (f" and {len(left) - 10} more" if len(left) > 10 else ""))
    return left


def _one_column(cols: list[str]) -> None:
    if len(cols) != 1:
        raise UserError(f"cannot tell the submission format from the sample submission's columns {cols[:6]}; "
                        f"set ensemble.format to one of {', '.join(FORMATS)}")


class Binary(Task):
    """One of two classes (data.task=binary): the softmax over both; its probability is the second's."""

    name = "binary"
    aggregates = ("mean", "max")

    def aggregate(self, probs: np.ndarray, codes: np.ndarray, n: int, how: str) -> np.ndarray:
        """The positive class's probability combined (max: the most suspicious image, as RSNA's views are
        read), the negative its complement: each answer's row stays a distribution."""
        p = reduce_rows(np.asarray(probs)[:, 1:2], codes, n, how)
        return np.hstack([1.0 - p, p])

    def guess_metric(self, sample: pd.DataFrame, id_col: str) -> str:
        """ROC AUC: what most two-class image competitions score (SIIM-ISIC, histopathology, cactus)."""
        return "roc_auc"

    def __post_init__(self):
        super().__post_init__()
        if self.classes and len(self.classes) != 2:
            raise UserError(f"data.task=binary needs exactly 2 classes and the labels hold {len(self.classes)} "
                            f"({list(self.classes)[:6]}); use data.task=multiclass")


def assign_folds(df: pd.DataFrame, n_folds: int, seed: int, grouped: bool) -> np.ndarray:
    """Fold index per row: StratifiedKFold, or StratifiedGroupKFold on df['group']."""
    counts = df["label"].value_counts()
    small = counts[counts < n_folds]
    if len(small):
        shown = ", ".join(f"'{k}' ({v})" for k, v in small.head(10).items())
        raise UserError(
            f"{counted(len(small), 'class', 'classes')} {'has' if len(small) == 1 else 'have'} fewer images than the {n_folds} folds: {shown}; "
            "add images, merge or drop those classes, or lower data.n_folds"
        )
    fold = np.full(len(df), -1, dtype=np.int64)
    if grouped and df["group"].nunique() < n_folds:
        raise UserError(f"data.group_col has {df['group'].nunique()} groups for {n_folds} folds; "
                        "lower data.n_folds or use a finer group column")
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if grouped:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, df["label"], groups=df["group"])
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, df["label"])
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return fold



SPACE_IN_TAG = "\u00b7"
"""A multi-label image's labels are kept as one space-separated string (split files, OOF, pseudo
labels); a space inside a label (RANZCR's `ETT - Abnormal`, a COCO category `traffic light`) is
written as this middle dot there and read back as a space. Names holding the dot are refused."""


def join_tags(tags: Iterable[str]) -> str:
    """Labels as the one string a multi-label image keeps (the inverse of split_tags)."""
    return " ".join(str(t).replace(" ", SPACE_IN_TAG) for t in tags)


def split_tags(label: str) -> list[str]:
    """A kept multi-label string back as its labels, spaces inside them restored."""
    return [t.replace(SPACE_IN_TAG, " ") for t in str(label).split()]


def canonical_tags(raw: Sequence[str], sep: str) -> list[str]:
    """Tag lists split by `sep`, stripped, without repeats, sorted: one spelling per set of labels."""
    out = []
    for value in raw:
        tags = {t.strip() for t in str(value).split(sep if sep != " " else None) if t.strip()}
        out.append(join_tags(sorted(tags)))
    return out
