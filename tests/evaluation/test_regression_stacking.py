"""--stack ridge for regression members (issue 29): a non-negative ridge on the members' OOF values,
cross-fitted over the folds (nested) and clipped to data.target_range, checked against scikit-learn;
better than either member where their errors are complementary; end to end through src.ensemble on
two tiny trained members; classifier stackers refused on values and ridge on class probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from src.core.config import CONFIG_DIR
from src.core.tasks import Regression, Task, make_task
from src.core.utils import UserError
from src.demo import build_regression_demo
from src.ensembling.pipeline import run as ensemble
from src.evaluation.metrics import compute_metric
from src.evaluation.stacking import fit_predict_test, nested_oof, stack_features
from src.training.trainer import train_fold

TASK = Regression(("Pawpularity",), False, (1.0, 100.0))
CONFIG = CONFIG_DIR / "demo_regression.yaml"
TINY = ("model.name=test_resnet", "train.epochs=1", "train.limit_batches=3", "loader.batch_size=16",
        "loader.num_workers=0", "data.check_images=false", "data.n_folds=2")


def _complementary(n: int = 400, seed: int = 0):
    """Two members that each see half the signal: y = a + b, member 1 predicts about a + mean(b), member 2 b + mean(a)."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 50, n), rng.uniform(0, 50, n)
    y = np.clip(1 + a + b, 1, 100)
    m1, m2 = 1 + a + 25 + rng.normal(0, 3, n), 1 + b + 25 + rng.normal(0, 3, n)
    return y, [m1[:, None], m2[:, None]], np.arange(n) % 4


def test_nested_oof_is_a_non_negative_ridge_per_fold_clipped_to_the_range():
    y, per, folds = _complementary()
    x = stack_features(per, TASK)
    got = nested_oof("ridge", x, y, folds, 1, 0, TASK)
    want = np.zeros(len(y))
    for k in range(4):
        ridge = Ridge(alpha=1.0, positive=True).fit(x[folds != k], y[folds != k])
        want[folds == k] = np.clip(ridge.predict(x[folds == k]), 1, 100)
    assert got.shape == (len(y), 1) and np.allclose(got[:, 0], want)
    test = fit_predict_test("ridge", x, y, x[:7] * 3, 1, 0, TASK)  # far outside: clipped
    assert np.allclose(test[:, 0], np.clip(Ridge(alpha=1.0, positive=True).fit(x, y).predict(x[:7] * 3), 1, 100))
    assert test.max() == 100


def test_a_stack_of_complementary_members_beats_the_better_member_and_their_mean():
    y, per, folds = _complementary()
    stacked = nested_oof("ridge", stack_features(per, TASK), y, folds, 1, 0, TASK)
    members = [compute_metric("rmse", y, TASK.from_classifier(p)) for p in per]
    mean = compute_metric("rmse", y, TASK.from_classifier((per[0] + per[1]) / 2))
    assert compute_metric("rmse", y, stacked) < min(*members, mean)


def test_a_bce_members_stack_input_is_its_value_not_its_logit():
    scaled = Regression(("Pawpularity",), False, (1.0, 100.0), True)
    values = np.array([[3.0], [50.0], [97.0]])
    assert np.allclose(stack_features([scaled.blend_input(values)], scaled), values)


@pytest.fixture(scope="module")
def members(tmp_path_factory, demo_cfg):
    root = tmp_path_factory.mktemp("regr_stack")
    comp = build_regression_demo(root / "comp", n_train=64, n_test=12)
    cfgs = [demo_cfg(comp, root / "out", *TINY, f"experiment.name={name}", f"loss.name={loss}", config=CONFIG)
            for name, loss in (("a", "bce"), ("b", "mse"))]
    for cfg in cfgs:
        for k in range(2):
            train_fold(cfg, k)
    return root, cfgs[0]


def _values(path) -> pd.Series:
    sub = pd.read_csv(path)
    return sub.set_index("Id")["Pawpularity"]


def test_src_ensemble_stack_ridge_is_the_ridge_of_the_members_values(members):
    root, cfg = members
    alone = [_values(ensemble(cfg, [m], tta=["identity"], out=root / "sub" / f"{m}.csv")) for m in ("a", "b")]
    out = ensemble(cfg, ["a", "b"], tta=["identity"], stack="ridge", out=root / "sub" / "stack.csv")
    oof = [pd.concat([pd.read_csv(cfg.out_dir.parent / m / f"fold{k}" / "oof.csv") for k in range(2)]).set_index("id")
           for m in ("a", "b")]
    ids = oof[0].index
    x = np.stack([o.loc[ids, "prob_Pawpularity"].to_numpy() for o in oof], 1)
    ridge = Ridge(alpha=1.0, positive=True).fit(x, oof[0].loc[ids, "label"].astype(float))
    test = np.stack([a.to_numpy() for a in alone], 1)
    want = np.clip(ridge.predict(test), 1, 100)
    got = _values(out)
    assert got.index.tolist() == alone[0].index.tolist()
    assert np.allclose(got.to_numpy(), want, atol=1e-3)


def test_classifier_stackers_are_refused_on_values_and_ridge_on_classes(members):
    root, cfg = members
    with pytest.raises(UserError, match="--stack logreg is a classifier.*regression targets.*--stack ridge"):
        ensemble(cfg, ["a", "b"], tta=["identity"], stack="logreg", out=root / "sub" / "refused.csv")
    assert not (root / "sub" / "refused.csv").exists()
    with pytest.raises(UserError, match="--stack ridge is a linear regression.*multiclass targets.*--stack logreg"):
        Task(("0", "1", "2")).check_second_level("--stack", "ridge")


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "ordinal"])
def test_every_class_task_refuses_ridge_and_keeps_its_classifiers(kind):
    task = make_task(kind, ("0", "1", "2") if kind != "binary" else ("0", "1"))
    for flag in ("--stack", "--classifier"):
        with pytest.raises(UserError, match=f"{flag} ridge is a linear regression.*{kind} targets"):
            task.check_second_level(flag, "ridge")
    task.check_second_level("--stack", "logreg")
    for name in ("logreg", "rf", "svm"):
        task.check_second_level("--classifier", name)
    for name in ("rf", "svm"):
        with pytest.raises(UserError, match=f"--classifier {name} is a classifier.*regression targets"):
            TASK.check_second_level("--classifier", name)
