"""The competition metrics added for issue 29 (top-1 error, ALASKA2's weighted AUC, RSNA's
probabilistic F-beta), each against an independent computation or a case worked by hand, in its
direction, through the schema, and with the submission format a binary probability metric needs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, auc, roc_auc_score, roc_curve

from src.core.config import METRIC_NAME_PATTERN
from src.core.tasks import make_task
from src.core.utils import UserError
from src.evaluation.metrics import check_metric_fits, compute_metric, is_better, metric_spec, pfbeta, weighted_auc

RNG = np.random.default_rng(7)


def _binary(y, s):
    return np.stack([1 - np.asarray(s, dtype=float), np.asarray(s, dtype=float)], 1)


def test_weighted_auc_with_equal_weights_is_the_roc_auc_even_with_ties():
    for _ in range(20):
        y = RNG.integers(0, 2, 300)
        s = np.round(RNG.random(300), 1)  # many ties: diagonal pieces of the curve
        assert weighted_auc(y, s, weights=(1.0, 1.0)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_weighted_auc_equals_the_vertical_area_of_each_band():
    """Five positives put a corner of the curve at TPR 0.4 exactly; without ties every piece is
    flat or vertical, so the area of each band is the trapezoid area of the curve clipped to it."""
    for _ in range(20):
        y = np.array([1] * 5 + [0] * 40)
        s = RNG.random(45)
        fpr, tpr, _ = roc_curve(y, s)
        bands = 2 * auc(fpr, np.clip(tpr, 0, 0.4)) + auc(fpr, np.clip(tpr, 0.4, 1) - 0.4)
        assert compute_metric("weighted_auc", y, _binary(y, s)) == pytest.approx(bands / 1.4, abs=1e-12)


def test_weighted_auc_worked_by_hand():
    # Positives 0.9, 0.3; negatives 0.5, 0.1: the curve (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
    # TPR 0-0.4 has width 1 -> 0.4 x 2; TPR 0.4-0.5 width 1 -> 0.1; TPR 0.5-1 width 0.5 -> 0.25.
    y, s = np.array([1, 1, 0, 0]), np.array([0.9, 0.3, 0.5, 0.1])
    assert weighted_auc(y, s) == pytest.approx((0.8 + 0.1 + 0.25) / 1.4)
    assert weighted_auc(y, s) > roc_auc_score(y, s)  # the early positive counts twice
    assert weighted_auc([0, 1], [0.1, 0.9]) == pytest.approx(1.0)
    assert weighted_auc([0, 1], [0.9, 0.1]) == pytest.approx(0.0)


def test_pfbeta_worked_by_hand():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.8, 0.4, 0.2, 0.2, 0.0])
    tp, fp = 1.2, 0.4
    precision, recall = tp / (tp + fp), tp / 2
    assert pfbeta(y, p) == pytest.approx(2 * precision * recall / (precision + recall))
    assert pfbeta(y, p, beta=2) == pytest.approx(5 * precision * recall / (4 * precision + recall))
    assert compute_metric("pfbeta", y, _binary(y, p)) == pytest.approx(pfbeta(y, p))
    assert compute_metric("pfbeta@2", y, _binary(y, p)) == pytest.approx(pfbeta(y, p, beta=2))
    # a hard 0/1 prediction is the ordinary F1; nothing predicted, or no positive, scores 0
    hard = np.array([1, 0, 1, 0, 0])
    assert pfbeta(y, hard) == pytest.approx(0.5)
    assert pfbeta(y, np.zeros(5)) == 0.0 and pfbeta(np.zeros(5), p) == 0.0
    assert pfbeta(y, np.array([1.5, 0.4, -1, 0.2, 0.0])) == pytest.approx(pfbeta(y, np.array([1, 0.4, 0, .2, 0])))


def test_top1_error_is_one_minus_the_accuracy():
    y = RNG.integers(0, 5, 200)
    probs = RNG.dirichlet(np.ones(5), 200)
    assert compute_metric("top1_error", y, probs) == pytest.approx(1 - accuracy_score(y, probs.argmax(1)))


@pytest.mark.parametrize("name", ["top1_error", "weighted_auc", "pfbeta", "pfbeta@0.5"])
def test_each_improves_in_its_direction_when_the_predictions_improve(name):
    y = np.tile([0, 1], 100) if name != "top1_error" else RNG.integers(0, 4, 200)
    n = 2 if name != "top1_error" else 4
    noise = RNG.dirichlet(np.ones(n), len(y))
    worse, better = (compute_metric(name, y, (1 - a) * noise + a * np.eye(n)[y]) for a in (0.0, 0.6))
    assert is_better(name, better, worse) and not is_better(name, worse, better)
    assert metric_spec(name).higher_is_better is (name != "top1_error")


def test_the_schema_knows_them_and_the_binary_ones_refuse_ten_classes():
    for n in ["top1_error", "weighted_auc", "pfbeta", "pfbeta@2", "pfbeta@0.5"]:
        assert METRIC_NAME_PATTERN.match(n) and metric_spec(n).name == n
    for bad in ["pfbeta@", "pf1", "weighted_auc@2", "top1"]:
        assert not METRIC_NAME_PATTERN.match(bad)
    for n in ["weighted_auc", "pfbeta"]:
        with pytest.raises(UserError, match=f"{n} scores binary tasks"):
            check_metric_fits(n, 10, make_task("multiclass", [str(c) for c in range(10)]))
    for kind in ["multilabel", "ordinal"]:
        with pytest.raises(UserError):
            check_metric_fits("top1_error", 3, make_task(kind, ["a", "b", "c"] if kind == "multilabel" else ["0", "1", "2"]))


@pytest.mark.parametrize("name", ["roc_auc", "log_loss", "average_precision", "weighted_auc", "pauc", "pauc@0.9",
                                  "pfbeta", "pfbeta@2"])
def test_every_probability_metric_of_a_binary_task_writes_the_probability(name):
    """The task's format rule and the metric registry agree: a binary metric that reads
    probabilities gets the second class's probability in a one-column submission, not a label."""
    assert not metric_spec(name).decisions and "binary" in metric_spec(name).tasks
    sample = pd.DataFrame({"id": ["a", "b"], "target": [0, 0]})
    assert make_task("binary", ["0", "1"]).resolve_format("auto", sample, "id", name) == "binary"
    assert make_task("binary", ["0", "1"]).resolve_format("auto", sample, "id", "top1_error") == "label"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["weighted_auc", "pfbeta"])
def test_a_binary_competition_trains_blends_and_scores_with_it(name, task_competition, overrides_for, tmp_path,
                                                              monkeypatch, capsys):
    """Folds, both folds of one epoch, the ensemble and src.score on the binary digits (0 against
    1) under the metric: the submission holds the probability, and src.score's number is the
    metric of that column against solution.csv."""
    from conftest import TINY

    import src.ensemble as ensemble
    import src.score as score
    import src.train as train
    from src.core.cli import run_cli

    data_dir, config, extra = task_competition("binary")
    over = overrides_for(data_dir, tmp_path / "out", *TINY, *extra, f"metric.name={name}", "data.n_folds=2",
                         "runtime.device=cpu")
    monkeypatch.chdir(tmp_path)
    run_cli(train.main, ["--fold", "all", "--config", str(config), *over])
    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, ["--config", str(config), "--no-tta", "--out", str(out), *over])
    sub = pd.read_csv(out, dtype={"id": str})
    sol = pd.read_csv(data_dir / "solution.csv", dtype={"id": str})
    assert ((sub["label"] > 0) & (sub["label"] < 1)).all()  # the probability, not a label
    capsys.readouterr()
    run_cli(score.main, [str(out), "--config", str(config), *over])
    said = capsys.readouterr().out.split()
    truth = sol.set_index("id").loc[sub["id"], "label"].astype(int).to_numpy()
    expected = compute_metric(name, truth, _binary(truth, sub["label"]))
    assert said[said.index(name) + 1] == f"{expected:.4f}"
