"""The regression task: one number per image (PetFinder's Pawpularity, 1-100, scored by RMSE).

Its class list is the one target column (('Pawpularity',)), so OOF, probability and prediction files
hold one column of predicted values. The head has one output: the value itself (loss.name=mse or
smooth_l1), or under loss.name=bce the logit of the value scaled to [0, 1] by data.target_range (the
Pawpularity trick: the prediction is the sigmoid times the range). Either way a prediction is clipped
to data.target_range, which every fold, member and kernel reads from its config, so members blend in
one space whatever their loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from src.core.tasks.base import Task, _one_column, assign_folds
from src.core.utils import UserError

if TYPE_CHECKING:  # torch loads when a method needs it
    import torch

LOSSES = ("mse", "smooth_l1", "bce")  # loss.name values a regression head trains with
MAX_BINS = 10  # the folds stratify on at most this many quantile bins of the target
# Stages that serve class predictions only, and what a regression run does instead. src.pseudo stays
# refused: a value has no confidence to pick by, and agreement between folds (a low spread) picks the
# images every fold already predicts alike, where a pseudo-label teaches little; PetFinder's winning
# solutions did not pseudo-label.
UNSERVED = {
    "pseudo": "src.pseudo adds confident class predictions as labels, and a regression prediction (a value) has no "
              "confidence to pick them by; train on the labelled images only, or blend more members with "
              "python -m src.ensemble",
}


@dataclass(frozen=True)
class Regression(Task):
    """One number per image (data.task=regression), clipped to data.target_range."""

    target_range: tuple[float, float] = (0.0, 1.0)  # data.target_range: [lo, hi]
    scaled: bool = False  # loss.name=bce: the head's logit is the value scaled to [0, 1] by the range

    name: ClassVar[str] = "regression"
    noun: ClassVar[str] = "targets"
    head: ClassVar[str] = "value"
    label_form: ClassVar[str] = "value"
    space: ClassVar[str] = "values"
    decision: ClassVar[str] = "value"
    report_metrics: ClassVar[tuple[str, ...]] = ("rmse", "mae", "r2")
    summary_metrics: ClassVar[tuple[str, ...]] = ("rmse", "mae")
    prob_word: ClassVar[str] = "predicted values"
    first_loss: ClassVar[str] = "bce"  # on the value scaled to [0, 1] by data.target_range, as Pawpularity's winners
    voting: ClassVar[tuple[str, ...]] = ("soft",)
    probe_models: ClassVar[tuple[str, ...]] = ("ridge",)
    probe_scores: ClassVar[tuple[str, ...]] = ("rmse", "mae", "r2")
    stackers: ClassVar[tuple[str, ...]] = ("ridge",)
    aggregates: ClassVar[tuple[str, ...]] = ("mean", "max")  # a value: any reduction is one

    def __post_init__(self):
        if len(self.classes) > 1:
            raise UserError(f"data.task=regression predicts one target column, and the class list holds "
                            f"{list(self.classes)[:6]}; delete the folds file to split again")

    @classmethod
    def from_config(cls, cfg, classes: Iterable[str] | None) -> Task:
        lo, hi = cfg.data.target_range
        return cls(tuple(classes) if classes else (cfg.data.label_col,), False, (float(lo), float(hi)),
                   cfg.loss.name == "bce")

    def with_classes(self, classes: Iterable[str]) -> Task:
        return replace(self, classes=tuple(classes))

    @classmethod
    def check_data(cls, data) -> str | None:
        if data.target_range is None:
            return ("data.task=regression needs data.target_range: [lo, hi], the range predictions are clipped to "
                    "and loss.name=bce scales by (PetFinder's Pawpularity: [1, 100])")
        if data.layout not in ("csv", "pixels") or data.label_cols is not None:
            return ("data.task=regression reads one number per image from train.csv's data.label_col "
                    "(data.layout=csv, data.label_cols=null)")
        if data.pseudo is not None:
            return "data.pseudo adds pseudo-labelled class predictions, and a regression task has none; set it to null"
        return None

    @classmethod
    def check_loss(cls, loss) -> str | None:
        if loss.name not in LOSSES:
            return f"loss.name={loss.name} is a classification loss; a regression head trains with mse, smooth_l1 or bce"
        if loss.distill_from is not None:
            return ("loss.distill_from mixes a teacher's class probabilities into the targets, and a regression task "
                    "trains on its values; set it to null")
        return None

    def check_metric(self, name: str, fits: frozenset[str], n_classes: int) -> None:
        if "regression" not in fits:
            raise UserError(f"metric.name={name} does not score regression predictions (a value per image); use rmse, "
                            "mae or r2")

    def check_stage(self, stage: str) -> None:
        if stage in UNSERVED:
            raise UserError(f"{UNSERVED[stage]}")

    def describe(self) -> str:
        lo, hi = self.target_range
        how = "bce on the scaled value" if self.scaled else "a value head"
        return f"1 target ({self.classes[0]} in [{lo:g}, {hi:g}], {how})"

    # ------------------------------------------------------------------ labels, targets and folds

    def tags(self, label: str) -> list[str]:
        """Every image counts under the one target column (the folds' table of images per fold)."""
        return list(self.classes)

    def class_list(self, labels: pd.Series, declared: Sequence[str] = ()) -> list[str]:
        return list(self.classes)

    def targets(self, labels: Iterable[str]) -> np.ndarray:
        """The values (N,) float32."""
        values = pd.to_numeric(pd.Series(list(labels), dtype=object), errors="coerce")
        if values.isna().any():
            bad = pd.Series(list(labels), dtype=object)[values.isna()].head(5).tolist()
            raise UserError(f"target values {bad} are not numbers; fix the labels, or delete the folds file to split "
                            "again")
        return values.to_numpy(dtype=np.float32)

    def split(self, df: pd.DataFrame, n_folds: int, seed: int, groups: pd.Series | None) -> np.ndarray:
        """StratifiedKFold (StratifiedGroupKFold on groups) over quantile bins of the target: the most
        bins, up to min(10, n / n_folds), that each hold at least n_folds images."""
        values = pd.Series(self.targets(df["label"]))
        bins = max(1, min(MAX_BINS, len(df) // n_folds))
        while True:
            binned = pd.qcut(values.rank(method="first"), bins, labels=False) if bins > 1 else values * 0
            if bins == 1 or binned.value_counts().min() >= n_folds:
                break
            bins -= 1
        return assign_folds(df.assign(label=binned.astype(int).astype(str).to_numpy()), n_folds, seed,
                            groups is not None)

    def one_hot(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets, dtype=np.float64)[:, None]

    def refuse_soft_targets(self, fix: str) -> None:
        raise UserError(f"a regression task trains on its values, and distillation and soft pseudo-labels mix class "
                        f"probabilities: {fix}")

    # ------------------------------------------------------------------ the head

    @property
    def n_outputs(self) -> int:
        return 1

    def values(self, z: np.ndarray) -> np.ndarray:
        """Head outputs (..., 1) as values (..., 1), clipped to the target range."""
        from scipy.special import expit

        lo, hi = self.target_range
        z = np.asarray(z, dtype=np.float64)
        return np.clip(lo + (hi - lo) * expit(z) if self.scaled else z, lo, hi)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        return self.values(logits)

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        """Values as the bce loss reads them: (y - lo) / (hi - lo), in [0, 1]."""
        lo, hi = self.target_range
        return (y - lo) / (hi - lo)

    def from_classifier(self, probs: np.ndarray) -> np.ndarray:
        """A ridge's predicted values (N, 1) clipped to the target range, as every prediction is."""
        lo, hi = self.target_range
        return np.clip(np.asarray(probs, dtype=np.float64), lo, hi)

    def mixup_options(self, smoothing: float) -> dict:
        return {"label_smoothing": 0.0, "num_classes": 1, "multi_label": True}  # the value as one dense column

    def mixup_target(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, None].float()

    def accuracy_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """No image is 'right' or 'wrong': NaN, so training prints train_accuracy nan, never a made-up rate."""
        import torch

        return torch.tensor(float("nan"), device=logits.device)

    def validation_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """The mean squared error of the (clipped) value, whatever the training loss."""
        return float(np.mean((self.values(logits)[:, 0] - np.asarray(targets, dtype=np.float64)) ** 2))

    # ------------------------------------------------------------------ blends and reviews

    def blend(self, logits: np.ndarray, voting: str, w: np.ndarray) -> np.ndarray:
        """The weighted mean of the predictors' values (K, N, 1) -> (N, 1)."""
        if voting not in self.voting:
            raise UserError(f"ensemble.voting={voting} does not apply to regression predictions (a value per image); "
                            "use soft (the mean value)")
        return (w * self.values(logits)).sum(0)

    def blend_input(self, probs: np.ndarray) -> np.ndarray:
        """Values back as head outputs (the scaled value's logit under bce), which `blend` reads."""
        if not self.scaled:
            return np.asarray(probs, dtype=np.float64)
        lo, hi = self.target_range
        q = np.clip((np.asarray(probs, dtype=np.float64) - lo) / (hi - lo), 1e-12, 1 - 1e-12)
        return np.log(q) - np.log1p(-q)

    def stack_input(self, logits: np.ndarray) -> np.ndarray:
        """A member's head outputs (N, 1) as the stacker reads them: the value (not the bce logit)."""
        return self.values(logits)

    def review(self, probs: np.ndarray, y: np.ndarray) -> dict:
        """The predicted value and its absolute error."""
        return {"predicted": probs[:, 0], "loss": np.abs(probs[:, 0] - y)}

    def right(self, review: pd.DataFrame) -> np.ndarray:
        """No value is right or wrong: the better-predicted half (|error| at most the median) counts as right."""
        return (review["loss"] <= review["loss"].median()).to_numpy()

    # ------------------------------------------------------------------ predictions and decisions

    def invalid_rows(self, probs: np.ndarray, tol: float = 0.0, sum_tol: float = 1e-4) -> np.ndarray:
        """Rows that are not one finite value (any finite number is a prediction)."""
        probs = np.asarray(probs, dtype=np.float64)
        return ~np.isfinite(probs).all(1) | (probs.shape[1] != 1)

    def shown(self, probs: np.ndarray) -> str:
        return f"{float(np.asarray(probs)[0]):.4g}"

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs)[:, 0]

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        self.check_stage("pseudo")
        return probs

    def counts(self, probs: np.ndarray, decisions: np.ndarray | None) -> np.ndarray:
        """What the submission's 'predicted' line shows: the values' mean and range."""
        v = np.asarray(probs)[:, 0]
        return np.array([f"mean {v.mean():.4g}, min {v.min():.4g}, max {v.max():.4g}"], dtype=object)

    def label_summary(self, labels: pd.Series, shown: int = 12) -> str:
        v = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=float)
        return (f"{self.classes[0]}: {len(v):,} values, mean {np.nanmean(v):.2f}, sd {np.nanstd(v):.2f}, "
                f"{np.nanmin(v):g} to {np.nanmax(v):g}")

    def guess_metric(self, sample: pd.DataFrame, id_col: str) -> str:
        """RMSE: what competitions with a value per image score (Pawpularity)."""
        return "rmse"

    def resolve_format(self, fmt: str, sample: pd.DataFrame, id_col: str, metric: str) -> str:
        """value: the predicted number in the sample's one column."""
        if fmt not in ("auto", "value"):
            raise UserError(f"ensemble.format={fmt} writes classes; a regression submission is value (the predicted "
                            "number in the sample submission's one column)")
        _one_column([c for c in sample.columns if c != id_col])
        return "value"
