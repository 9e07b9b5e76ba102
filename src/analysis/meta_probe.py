"""The metadata-only baseline (`python -m src.probe --meta`): scikit-learn's histogram gradient
boosting on the data.meta_cols columns alone, fitted on the experiment's own folds, its OOF score
printed beside the image probe's and the fine-tuned model's. What the images add is the gap.

Each fold encodes the metadata with the preprocessing fitted on its training rows
(src.data.meta_table), as the image + metadata model does; categories go in as categorical
features (HistGradientBoostingClassifier's native split), index 0 for unknown.

    outputs/<exp>/probe/meta_oof.csv    id, fold, label, target, prob_<class>...
    outputs/<exp>/probe/meta.json       scores per fold and OOF
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.multiclass import OneVsRestClassifier

from src.analysis.probe import _finetuned_score, _full_proba
from src.core.config import PROBE_CLASSIFIERS, Config
from src.core.tasks import task_of
from src.core.utils import UserError, atomic_save, atomic_write_text
from src.data.folds import fold_tables
from src.data.meta_table import check_meta, encode, fit_meta, meta_dims, meta_rows
from src.data.tables import prob_columns
from src.evaluation.metrics import check_metric_fits, compute_metric, summary

MAX_CATEGORIES = 254  # HistGradientBoosting's categorical features take fewer values than its 255 bins


def _classifier(spec: dict, seed: int) -> HistGradientBoostingClassifier:
    dense, cards = meta_dims(spec)
    categorical = [False] * dense + [c <= MAX_CATEGORIES for c in cards]  # wider vocabularies: split as numbers
    return HistGradientBoostingClassifier(categorical_features=categorical if any(categorical) else None,
                                          random_state=seed)


def _image_probe_scores(cfg: Config) -> dict[str, float]:
    """The image probe's OOF scores already written (probe/<classifier>.json), by classifier."""
    found = {}
    for name in PROBE_CLASSIFIERS:
        path = cfg.out_dir / "probe" / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())["oof"][cfg.metric.name]
    return found


def fit_meta_folds(cfg: Config, rows: pd.DataFrame, y: np.ndarray, folds: np.ndarray, n_classes: int) -> np.ndarray:
    """OOF probabilities (N, C): fold k's rows by a classifier fitted, with its own preprocessing, on
    the other folds' rows. `y`: class indices (N,), or a 0/1 matrix (N, L) fitted one label at a time."""
    oof = np.full((len(rows), n_classes), np.nan)
    for k in sorted(set(folds)):
        train = folds != k
        spec = fit_meta(cfg, rows[train])
        x = encode(spec, rows)
        clf = _classifier(spec, cfg.experiment.seed)
        clf = (OneVsRestClassifier(clf) if y.ndim == 2 else clf).fit(x[train], y[train])
        oof[folds == k] = _full_proba(clf, x[folds == k], n_classes)
    return oof


def run_meta_probe(cfg: Config) -> dict:
    """Fit the metadata-only baseline over the experiment's folds; write and print its OOF scores."""
    if cfg.data.meta_cols is None:
        raise UserError("src.probe --meta fits on the metadata columns, and data.meta_cols is null; set "
                        "data.meta_cols=auto or list the columns")
    task_of(cfg).check_stage("probe")
    cols = check_meta(cfg)
    table, _, classes = fold_tables(cfg, -1)
    task = task_of(cfg, classes)
    check_metric_fits(cfg.metric.name, len(classes), task)
    y, folds = task.targets(table["label"]), table["fold"].to_numpy()
    probs = fit_meta_folds(cfg, meta_rows(cfg, table["id"], "train"), y, folds, len(classes))
    if np.isnan(probs).any():
        raise UserError("some training images are in no fold of the split; delete the folds file to split again")
    probs = task.from_classifier(probs)  # ordinal: the expected grade is the grade score
    oof = table[["id", "fold", "label"] + (["target"] if "target" in table else [])].copy()
    oof[prob_columns(classes)] = probs
    metric = cfg.metric.name
    scores = {"classifier": "hist_gradient_boosting", "metric": metric, "oof": summary(y, probs, metric),
              "folds": {int(k): compute_metric(metric, y[folds == k], probs[folds == k]) for k in sorted(set(folds))}}
    folder = Path(cfg.out_dir) / "probe"
    atomic_save(folder / "meta_oof.csv", lambda tmp: oof.to_csv(tmp, index=False))
    atomic_write_text(folder / "meta.json", json.dumps(scores, indent=2))
    images, tuned = _image_probe_scores(cfg), _finetuned_score(cfg)
    print(f"OOF {metric}: metadata alone (gradient boosting on {len(cols)} columns) {scores['oof'][metric]:.4f}; image probe "
          + (", ".join(f"{k} {v:.4f}" for k, v in images.items()) or "(none yet: python -m src.probe)")
          + "; fine-tuned " + (f"{cfg.experiment.name} {tuned[0]:.4f}" if tuned else "(no finished fold)"))
    return scores
