"""The ordinal task: one integer grade per image, in order, read as a grade score."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from src.core.tasks.base import REGRESSION_LOSSES, Task, _thresholds_given, reduce_rows
from src.core.utils import UserError, softmax

if TYPE_CHECKING:  # torch loads when a method needs it
    import torch


class Ordinal(Task):
    """One integer grade per image, in order (data.task=ordinal): a regression head or a softmax over
    the grades, read as a grade score either way."""

    name = "ordinal"
    noun = "grades"
    space = "grades"
    decision = "grades"
    report_metrics = ("accuracy", "f1_macro", "qwk")
    prob_word = "grade distributions"
    aggregates = ("mean", "max")

    def aggregate(self, probs: np.ndarray, codes: np.ndarray, n: int, how: str) -> np.ndarray:
        """The grade scores combined (max: the most severe image), as the distribution whose mean is that score."""
        score = reduce_rows(expected_grade(probs)[:, None], codes, n, how)[:, 0]
        return grade_probs(score, np.shape(probs)[1])

    def __post_init__(self):
        bad = [c for c in self.classes if not _is_int(c)]
        if bad:
            raise UserError(f"data.task=ordinal needs integer grades as labels, and the labels hold {bad[:5]}; "
                            "map them to 0, 1, 2, ... in their order, or use data.task=multiclass")
        if self.classes and len(self.classes) < 2:
            raise UserError(f"data.task=ordinal needs at least 2 grades, and the labels hold {list(self.classes)}")
        _note_gaps(self.classes)

    @property
    def head(self) -> str:  # type: ignore[override]
        return "score" if self.regression else "softmax"

    @classmethod
    def check_data(cls, data) -> str | None:
        if data.label_cols is not None:
            return ("data.label_cols (one 0/1 column per class) names no grades; an ordinal task reads integer "
                    "grades from data.label_col, so set data.label_cols to null")
        return super().check_data(data)

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

    voting = ("soft", "logits")

    def blend(self, logits: np.ndarray, voting: str, w: np.ndarray) -> np.ndarray:
        """The weighted mean of the predictors' grade scores (a regression output, or the expected
        grade of a softmax), as a grade distribution."""
        if voting not in self.voting:
            raise UserError(f"ensemble.voting={voting} does not apply to ordinal predictions (a grade score per image); "
                            "use soft (the mean grade)")
        return grade_probs((w[:, :, 0] * grade_scores(logits)).sum(0), len(self.classes))

    def blend_input(self, probs: np.ndarray) -> np.ndarray:
        """The grade score (N, 1)."""
        return expected_grade(probs)[:, None]

    def review(self, probs: np.ndarray, y: np.ndarray) -> dict:
        """The grade score, the rounded grade and the score's distance from the label."""
        score = expected_grade(probs)
        return {"predicted": self.predicted(probs), "score": score, "loss": np.abs(score - y)}

    def guess_metric(self, sample: pd.DataFrame, id_col: str) -> str:
        """Quadratic weighted kappa: what graded competitions score (APTOS, diabetic retinopathy)."""
        return "qwk"

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


def _note_gaps(classes: tuple[str, ...]) -> None:
    """Grades with gaps (0, 1, 3, 4) are decoded over their positions (0..3): said once, since the
    grade score, its thresholds and qwk then count 1 -> 3 as one step where the grade values count two."""
    grades = sorted({int(float(c)) for c in classes})
    missing = sorted(set(range(grades[0], grades[-1] + 1)) - set(grades)) if grades else []
    if missing:
        warnings.warn(f"ordinal grades {grades} skip {missing}: expected grades, thresholds and qwk are computed "
                      f"over their positions 0..{len(grades) - 1}, so each gap counts as one step (a qwk over the "
                      "grade values counts it wider); the submission writes the grades themselves",
                      UserWarning, stacklevel=3)


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
