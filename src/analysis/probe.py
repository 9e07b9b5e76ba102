"""The frozen-feature baseline: a scikit-learn classifier on a frozen backbone's pooled features,
fitted on the experiment's own folds, so its OOF score sits beside the fine-tuned model's
(`python -m src.probe`). The fine-tuned model must beat it.

Regression tasks fit a ridge regression (the penalty chosen per fold by RidgeCV's leave-one-out
error on that fold's training rows only) and report rmse, mae and r2; its values are clipped to
data.target_range. Multi-label tasks fit one classifier per label (scikit-learn's OneVsRestClassifier) and submit the
labels above thresholds fitted on the probe's OOF probabilities; ordinal tasks read the
classifier's expected grade as the grade score and submit the grades between thresholds fitted on
its OOF scores, as src.ensemble does for the fine-tuned models.

    outputs/<exp>/probe/features-{train,test}-<key>.npy   cached features (src/analysis/features.py)
    outputs/<exp>/probe/<classifier>_oof.csv              id, fold, label, target, prob_<class>...
    outputs/<exp>/probe/<classifier>.json                 scores per fold and OOF
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin, is_regressor
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from src.analysis.features import cached_features, frozen_backbone
from src.core.config import PROBE_CLASSIFIERS, Config
from src.core.progress import progress
from src.core.runtime import Runtime
from src.core.tasks import Task, task_of
from src.core.utils import UserError, atomic_save, atomic_write_text
from src.data.answers import refuse_answers
from src.data.folds import fold_tables
from src.data.image_cache import cache_root
from src.data.tables import load_test_table, prob_columns
from src.ensembling.submission import checked_submission, submission_texts, write_submission
from src.ensembling.write_guard import check_submission_out
from src.evaluation.decoding import decide, fit_decisions
from src.evaluation.metrics import check_metric_fits, compute_metric, summary
from src.runs.layout import finished_folds
from src.runs.members import open_member

RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15))  # the ridge probe's penalties (features standardized)
# Standardized features for the linear and kernel models; trees need no scaling.
CLASSIFIERS: dict[str, Callable[[int], ClassifierMixin]] = {
    "logreg": lambda seed: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    "rf": lambda seed: RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed),
    # SVC(probability=True) is deprecated (scikit-learn 1.9): calibrated on internal folds instead.
    "svm": lambda seed: make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(random_state=seed), ensemble=False)),
    # regression: the value; the penalty from a grid by leave-one-out on the fold's own training rows
    "ridge": lambda seed: make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)),
}


assert tuple(CLASSIFIERS) == PROBE_CLASSIFIERS  # the names src.probe offers before importing this module


@dataclass
class ProbeResult:
    oof: pd.DataFrame  # id, fold, label, target, prob_<class> for every training image
    scores: dict  # per fold and OOF
    finetuned: float | None  # the experiment's OOF score over its finished folds, when it has any
    submission: Path | None


def _full_proba(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba (N, C) over every class, also when a class was absent from the fit (a
    one-vs-rest classifier's columns are the labels already); a regressor's values (N, 1)."""
    if is_regressor(clf):
        return clf.predict(x)[:, None]
    if isinstance(clf, OneVsRestClassifier):
        return clf.predict_proba(x)
    out = np.zeros((len(x), n_classes))
    out[:, clf.classes_] = clf.predict_proba(x)
    return out


def fit_folds(x: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, make: Callable[[], ClassifierMixin],
              test: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(OOF probabilities (N, C): fold k's rows by a classifier fitted on the other folds,
    test probabilities: the mean over the fold classifiers). `y`: class indices (N,), or a 0/1
    matrix (N, L), fitted one label at a time (one-vs-rest)."""
    oof = np.full((len(x), n_classes), np.nan)
    test_probs = []
    for k in progress(sorted(set(folds)), desc="probe folds"):
        clf = (OneVsRestClassifier(make()) if y.ndim == 2 else make()).fit(x[folds != k], y[folds != k])
        oof[folds == k] = _full_proba(clf, x[folds == k], n_classes)
        if test is not None:
            test_probs.append(_full_proba(clf, test, n_classes))
    return oof, (np.mean(test_probs, 0) if test is not None else None)


def _finetuned_score(cfg: Config) -> tuple[float, list[int]] | None:
    """The experiment's OOF score over the folds it has finished now (not cv.json, which may be
    older), and those folds; None before any fold is finished."""
    if not finished_folds(cfg.out_dir):
        return None
    m = open_member(str(cfg.experiment.name), cfg.experiment.output_dir, "warn_quietly", cfg.data.dir)
    scores = m.oof_scores()
    return scores.get(cfg.metric.name), scores["folds"]


def _features(cfg: Config, table: pd.DataFrame, classes: list[str], want_test: bool, rt: Runtime, cache: bool):
    """Train features, and test features with the test table and sample submission when wanted."""
    folder = cfg.out_dir / "probe"
    backbone = functools.cache(lambda: frozen_backbone(cfg, len(classes), rt))
    x, hit = cached_features(cfg, backbone, table, "train", rt, folder, cache)
    print(f"train features {x.shape}: {'read from the cache' if hit else 'computed'} ({folder})")
    if not want_test:
        return x, None, None, None
    test, sample = load_test_table(cfg.data, cache_root(cfg))
    xt, hit = cached_features(cfg, backbone, test, "test", rt, folder, cache)
    print(f"test features {xt.shape}: {'read from the cache' if hit else 'computed'}")
    return x, xt, test, sample


def _write_submission(cfg: Config, out: Path, probs: np.ndarray, task: Task, sample: pd.DataFrame,
                      thresholds: np.ndarray | None) -> Path:
    classes, e = list(task.classes), cfg.ensemble
    decisions = decide(probs, thresholds, e.min_labels, task)
    sub, fmt = checked_submission(probs, sample, cfg.data.id_col, e.format, cfg.metric.name, e.top_k, decisions, task)
    write_submission(out, submission_texts(sub, probs, classes, sample, cfg.data.id_col, thresholds))
    print(f"wrote {out} ({len(sub)} rows, format {fmt}; the mean of the {cfg.data.n_folds} fold classifiers"
          + ("; thresholds fitted on the probe's OOF" if thresholds is not None else "") + ")")
    return out


def _oof_scores(task: Task, y: np.ndarray, probs: np.ndarray, metric: str) -> dict[str, float]:
    """The metric first, then what every report quotes (regression: every metric of the task)."""
    names = dict.fromkeys((metric, *summary(y, probs, metric), *task.probe_scores))
    return {m: compute_metric(m, y, probs) for m in names}


def run_probe(cfg: Config, classifier: str | None = None, out: str | Path | None = None, cache: bool = True
              ) -> ProbeResult:
    """Fit `classifier` (default: the task's first, logreg or ridge) on frozen features over the
    experiment's folds; print its OOF score beside the fine-tuned one; write the OOF table, the scores
    and, with `out`, a submission."""
    classifier = classifier or task_of(cfg).probe_models[0]
    if classifier not in CLASSIFIERS:
        raise UserError(f"--classifier {classifier} is not one of {sorted(CLASSIFIERS)}")
    task_of(cfg).check_second_level("--classifier", classifier)
    refuse_answers(cfg.data, "src.probe", "fits and scores a classifier on image features, one row per image")
    out = Path(out) if out else None
    if out is not None:
        check_submission_out(out, cfg, recorded_by_ledger=False)
    rt = Runtime.from_cfg(cfg.runtime)
    table, _, classes = fold_tables(cfg, -1)  # the split (and reviewed labels) training uses
    task = task_of(cfg, classes)
    check_metric_fits(cfg.metric.name, len(classes), task)
    x, xt, _, sample = _features(cfg, table, classes, out is not None, rt, cache)
    y = task.targets(table["label"])
    probs, test_probs = fit_folds(x, y, table["fold"].to_numpy(), len(classes),
                                  lambda: CLASSIFIERS[classifier](cfg.experiment.seed), xt)
    if np.isnan(probs).any():
        raise UserError("some training images are in no fold of the split; delete the folds file to split again")
    # in the task's form (ordinal: the classifier's expected grade is the grade score)
    probs, test_probs = (None if p is None else task.from_classifier(p) for p in (probs, test_probs))
    oof = table[["id", "fold", "label"] + (["target"] if "target" in table else [])].copy()
    oof[prob_columns(classes)] = probs
    metric = cfg.metric.name
    folds = oof["fold"].to_numpy()
    scores = {"classifier": classifier, "metric": metric, "oof": _oof_scores(task, y, probs, metric),
              "folds": {int(k): compute_metric(metric, y[folds == k], probs[folds == k]) for k in sorted(set(folds))}}
    folder = cfg.out_dir / "probe"
    atomic_save(folder / f"{classifier}_oof.csv", lambda tmp: oof.to_csv(tmp, index=False))
    atomic_write_text(folder / f"{classifier}.json", json.dumps(scores, indent=2))
    found = _finetuned_score(cfg)
    tuned = found[0] if found else None
    print(f"OOF {metric}: frozen features + {classifier} {scores['oof'][metric]:.4f}; fine-tuned "
          + (f"{cfg.experiment.name} {tuned:.4f} (OOF of its finished folds {found[1]})" if found
             else "(no finished fold: train --fold all first)"))
    sub = (_write_submission(cfg, out, test_probs, task, sample, fit_decisions(task, cfg.metric.name, y, probs, cfg.ensemble)) if out is not None
           else None)
    return ProbeResult(oof, scores, tuned, sub)
