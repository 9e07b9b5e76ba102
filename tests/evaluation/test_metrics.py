"""Every metric against an independent computation (scikit-learn's, or a case worked by hand for
MAP@k, GAP and the partial AUC), in the direction it is optimised, for each task it scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    fbeta_score,
    log_loss,
    roc_auc_score,
)

from src.core.config import METRIC_NAME_PATTERN
from src.evaluation.metrics import compute_metric, decide, is_better, metric_note, metric_spec, partial_auc

rng = np.random.default_rng(0)
N, C, L = 200, 4, 5
Y_MC = rng.integers(0, C, N)
P_MC = rng.dirichlet(np.ones(C), N)
P_MC[np.arange(N), Y_MC] += 0.3  # some skill, so the scores are not all chance
P_MC /= P_MC.sum(1, keepdims=True)
Y_BIN = rng.integers(0, 2, N)
S_BIN = np.clip(0.35 * Y_BIN + rng.uniform(0, 0.65, N), 0, 1)
P_BIN = np.stack([1 - S_BIN, S_BIN], 1)
Y_ML = (rng.uniform(size=(N, L)) < 0.3).astype(int)
P_ML = np.clip(0.4 * Y_ML + rng.uniform(0, 0.6, (N, L)), 0, 1)


@pytest.mark.parametrize("name, expected", [
    ("accuracy", accuracy_score(Y_MC, P_MC.argmax(1))),
    ("balanced_accuracy", balanced_accuracy_score(Y_MC, P_MC.argmax(1))),
    ("f1_macro", f1_score(Y_MC, P_MC.argmax(1), average="macro")),
    ("f1_micro", f1_score(Y_MC, P_MC.argmax(1), average="micro")),
    ("f1_weighted", f1_score(Y_MC, P_MC.argmax(1), average="weighted")),
    ("f2_macro", fbeta_score(Y_MC, P_MC.argmax(1), beta=2, average="macro")),
    ("roc_auc", roc_auc_score(Y_MC, P_MC, multi_class="ovr", average="macro")),
    ("average_precision", np.mean([average_precision_score(Y_MC == c, P_MC[:, c]) for c in range(C)])),
    ("log_loss", log_loss(Y_MC, P_MC)),
    ("qwk", cohen_kappa_score(Y_MC, P_MC.argmax(1), weights="quadratic")),
])
def test_multiclass_metrics_equal_scikit_learn(name, expected):
    assert compute_metric(name, Y_MC, P_MC) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("accuracy", accuracy_score(Y_BIN, P_BIN.argmax(1))),
    ("roc_auc", roc_auc_score(Y_BIN, S_BIN)),
    ("average_precision", average_precision_score(Y_BIN, S_BIN)),
    ("log_loss", log_loss(Y_BIN, P_BIN)),
    ("f1_macro", f1_score(Y_BIN, P_BIN.argmax(1), average="macro")),
])
def test_binary_metrics_equal_scikit_learn(name, expected):
    assert compute_metric(name, Y_BIN, P_BIN) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("accuracy", accuracy_score(Y_ML, (P_ML >= 0.5).astype(int))),
    ("f1_macro", f1_score(Y_ML, P_ML >= 0.5, average="macro", zero_division=0)),
    ("f1_micro", f1_score(Y_ML, P_ML >= 0.5, average="micro", zero_division=0)),
    # per image: an image with no true and no predicted label scores 1 (zero_division=1), or 0 with @0
    ("f1_samples", f1_score(Y_ML, P_ML >= 0.5, average="samples", zero_division=1)),
    ("f2_samples", fbeta_score(Y_ML, P_ML >= 0.5, beta=2, average="samples", zero_division=1)),
    ("f2_samples@0", fbeta_score(Y_ML, P_ML >= 0.5, beta=2, average="samples", zero_division=0)),
    ("roc_auc", roc_auc_score(Y_ML, P_ML, average="macro")),
    ("average_precision", average_precision_score(Y_ML, P_ML, average="macro")),
    ("log_loss", np.mean([log_loss(Y_ML[:, j], P_ML[:, j], labels=[0, 1]) for j in range(L)])),
])
def test_multilabel_metrics_equal_scikit_learn(name, expected):
    assert compute_metric(name, Y_ML, np.clip(P_ML, 1e-15, 1 - 1e-15)) == pytest.approx(expected, abs=1e-9)


def test_multilabel_decisions_follow_the_thresholds():
    th = np.array([0.2, 0.4, 0.5, 0.6, 0.9])
    expected = fbeta_score(Y_ML, (P_ML >= th).astype(int), beta=2, average="samples", zero_division=1)
    assert compute_metric("f2_samples", Y_ML, P_ML, thresholds=th) == pytest.approx(expected)
    assert (decide(P_ML, th) == (P_ML >= th)).all() and (decide(P_MC) == P_MC.argmax(1)).all()


def test_map_at_k_worked_by_hand():
    probs = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1]])
    y = np.array([0, 1, 3, 2])  # ranks 1, 3, 4, 2
    assert compute_metric("map@5", y, probs) == pytest.approx((1 + 1 / 3 + 1 / 4 + 1 / 2) / 4)
    assert compute_metric("map@3", y, probs) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert compute_metric("map@1", y, probs) == pytest.approx(compute_metric("accuracy", y, probs))


def test_gap_worked_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right): precision at the hits 1/1 and 2/3
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    y = np.array([0, 0, 0])
    assert compute_metric("gap", y, probs) == pytest.approx((1.0 + 2 / 3) / 3)


def test_partial_auc_matches_the_isic_2024_scorer_and_a_hand_case():
    for seed in range(5):
        r = np.random.default_rng(seed)
        y = r.integers(0, 2, 300)
        s = np.clip(0.3 * y + r.uniform(0, 0.7, 300), 0, 1)
        max_fpr = 0.2  # ISIC 2024's own scorer: sklearn's McClish-standardised area, undone
        scaled = roc_auc_score(1 - y, 1 - s, max_fpr=max_fpr)
        isic = 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)
        assert partial_auc(y, s, 0.8) == pytest.approx(isic, abs=1e-9)
        assert compute_metric("pauc", y, np.stack([1 - s, s], 1)) == pytest.approx(isic, abs=1e-9)
    # perfect ranking: the whole band, 1 - min_tpr; reversed ranking: nothing
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    assert partial_auc(y, s, 0.8) == pytest.approx(0.2) and partial_auc(y, 1 - s, 0.8) == pytest.approx(0.0)
    assert compute_metric("pauc@0.5", y, np.stack([1 - s, s], 1)) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["accuracy", "balanced_accuracy", "f1_macro", "f2_samples", "roc_auc", "pauc",
                                  "average_precision", "qwk", "map@5", "gap"])
def test_higher_is_better_and_log_loss_lower(name):
    assert metric_spec(name).higher_is_better and is_better(name, 0.9, 0.8) and not is_better(name, 0.8, 0.9)
    assert not metric_spec("log_loss").higher_is_better and is_better("log_loss", 0.2, 0.3)
    assert not is_better(name, float("nan"), 0.1) and is_better(name, 0.1, None)


def test_every_metric_improves_in_its_direction_when_the_predictions_improve():
    """Blend the probabilities toward the truth: each metric's score moves the way it is optimised."""
    onehot = np.eye(C)[Y_MC]
    for name in ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "average_precision", "log_loss", "qwk",
                 "map@3", "gap"]:
        worse, better = (compute_metric(name, Y_MC, (1 - a) * P_MC + a * onehot) for a in (0.0, 0.5))
        assert is_better(name, better, worse), name


def test_the_schema_and_the_registry_agree_on_metric_names():
    names = ["accuracy", "balanced_accuracy", "f1_macro", "f1_micro", "f1_weighted", "f2_weighted", "f2_samples",
             "f2_samples@0", "f0.5_macro", "roc_auc", "pauc", "pauc@0.9", "average_precision", "log_loss", "qwk", "map@5", "map@12",
             "gap"]
    for n in names:
        assert METRIC_NAME_PATTERN.match(n) and metric_spec(n).name == n
    for bad in ["f1", "f1_sample", "f1_macro@0", "f2_samples@1", "map@0", "map@", "pauc@1.5", "auc", "Accuracy"]:
        assert not METRIC_NAME_PATTERN.match(bad)
        with pytest.raises(ValueError, match="is not a metric|unknown metric"):
            metric_spec(bad)
    assert metric_spec("f2_samples").tasks == {"multilabel"}  # per image: multi-label predictions only


def test_an_image_with_no_true_and_no_predicted_label_is_a_perfect_match_unless_at_0():
    """Kaggle's mean F-score (Planet's F2) counts empty == empty as 1; f<beta>_samples@0 as scikit-learn's
    zero_division=0. The other images score the same under both, and the note says which is used."""
    y = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]])
    p = np.array([[0.1, 0.2, 0.3], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.9, 0.1, 0.1]])
    rest = fbeta_score(y[1:3], p[1:3] >= 0.5, beta=2, average="samples")  # 1 and 5/9: no empty image
    assert compute_metric("f2_samples", y, p) == pytest.approx((1.0 + 2 * rest + 0.0) / 4)
    assert compute_metric("f2_samples@0", y, p) == pytest.approx((0.0 + 2 * rest + 0.0) / 4)
    assert "scores 1" in metric_note("f2_samples") and "scores 0" in metric_note("f2_samples@0")
    assert metric_note("f1_macro") == ""


def test_thresholds_are_fitted_to_the_same_per_image_definition():
    """Where most images have no label, the thresholds fitted to f2_samples leave those images empty
    and score 1 under the metric's own definition (before, zero_division=0 capped it at 0.1); under
    f2_samples@0 an empty image can never score, so no threshold beats 0.1."""
    from src.evaluation.decoding import fit_thresholds

    y = np.zeros((40, 3), dtype=int)
    y[:4, 0] = 1
    p = np.full((40, 3), 0.3)
    p[:4, 0] = 0.97
    high = fit_thresholds("f2_samples", y, p, "global")
    low = fit_thresholds("f2_samples@0", y, p, "global")
    assert (high > 0.3).all() and compute_metric("f2_samples", y, p, high) == 1.0
    assert compute_metric("f2_samples@0", y, p, low) == pytest.approx(0.1)
