"""A second-level model (a stacker) over the members' OOF predictions, scored honestly.

The members' OOF predictions are out-of-fold already; the stacker is cross-fitted over the same
folds (nested): the prediction for a row of fold k comes from a stacker fitted on the other
folds' rows only, so its OOF score is never fitted and scored on the same rows. For the test
set one stacker is fitted on every OOF row.

Multi-label tasks stack one classifier per label (scikit-learn's OneVsRestClassifier) over every
member's log-odds of every label; ordinal tasks stack the members' grade scores, and the stacker's
expected grade is the stacked score (src.core.tasks), so thresholds between grades apply after it.
Regression tasks stack the members' values with a ridge regression whose weights are non-negative
(a member that predicts the same target never counts against it; with two members, a negative
weight would fit the noise between them), its prediction clipped to data.target_range.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import is_regressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from src.core.config import STACKERS
from src.core.tasks import Task
from src.core.utils import UserError


def make_stacker(name: str, seed: int = 0):
    """A scikit-learn model over stacked member predictions.

    Args:
        name: logreg (standardized features, L2 multinomial logistic regression, over log-probabilities) or
            ridge (L2 linear regression over values, non-negative weights and an intercept: the values'
            own scale, so its weights read as blend weights).
        seed: random state of the solver.
    """
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    if name == "ridge":
        return Ridge(alpha=1.0, positive=True)
    raise UserError(f"unknown stacker '{name}'; use one of {', '.join(STACKERS)}")


def stack_features(per: list[np.ndarray], task: Task | None = None) -> np.ndarray:
    """Members' blend inputs [(N, C)] * K -> features (N, K * C): log-probabilities (regression: values)."""
    return np.concatenate([(task or Task()).stack_input(p) for p in per], axis=1)


def _fit_predict(name: str, x_fit: np.ndarray, y_fit: np.ndarray, x_pred: np.ndarray, n_classes: int,
                 seed: int, task: Task | None = None) -> np.ndarray:
    """Fit on (x_fit, y_fit), return probabilities (M, n_classes) for x_pred (a regressor: values (M, 1));
    classes absent from y_fit get probability 0. A 0/1 `y_fit` (N, L) is fitted one label at a time; an ordinal
    task's probabilities become the grade distribution of their expected grade."""
    if y_fit.ndim == 2:
        return OneVsRestClassifier(make_stacker(name, seed)).fit(x_fit, y_fit).predict_proba(x_pred)
    if task is not None:  # in the task's form: an ordinal task's as the grade distribution of their expected grade
        return task.from_classifier(_fit_predict(name, x_fit, y_fit, x_pred, n_classes, seed))
    model = make_stacker(name, seed)
    if is_regressor(model):  # the value (M, 1)
        return model.fit(x_fit, y_fit).predict(x_pred)[:, None]
    present = np.unique(y_fit)
    out = np.zeros((len(x_pred), n_classes))
    if len(present) == 1:  # a one-class fit: that class, surely
        out[:, present[0]] = 1.0
        return out
    model.fit(x_fit, y_fit)
    out[:, model.classes_] = model.predict_proba(x_pred)
    return out


def nested_oof(name: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, seed: int = 0,
               task: Task | None = None) -> np.ndarray:
    """The stacker's OOF probabilities (N, n_classes): rows of fold k predicted by a stacker fitted
    on the rows of every other fold."""
    ks = np.unique(folds)
    if len(ks) < 2:
        raise UserError("stacking needs OOF predictions from at least 2 folds; train more folds")
    out = np.zeros((len(y), n_classes))
    for k in ks:
        held = folds == k
        out[held] = _fit_predict(name, x[~held], y[~held], x[held], n_classes, seed, task)
    return out


def fit_predict_test(name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, n_classes: int, seed: int = 0,
                     task: Task | None = None) -> np.ndarray:
    """Test probabilities (M, n_classes) of a stacker fitted on every OOF row."""
    return _fit_predict(name, x, y, x_test, n_classes, seed, task)
