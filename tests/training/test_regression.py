"""data.task=regression (issue 29): PetFinder Pawpularity's layout end to end (folds, both folds
trained, the ensemble with TTA, src.score), and the task's own arithmetic (metrics against
scikit-learn, binned folds, the bce head's scaling, blends across heads, mixup of values)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from timm.data import Mixup

from src.core.config import CONFIG_DIR
from src.core.tasks import Regression, task_of
from src.core.utils import UserError
from src.demo import PETFINDER_FLAGS, build_regression_demo
from src.ensembling.pipeline import run as ensemble
from src.evaluation.metrics import compute_metric, metric_spec
from src.evaluation.scoring import score_submission
from src.models.losses import build_loss
from src.runs.layout import fold_paths
from src.training.trainer import train_fold

CONFIG = CONFIG_DIR / "demo_regression.yaml"
TINY = ("model.name=test_resnet", "train.epochs=1", "train.limit_batches=3", "loader.batch_size=16",
        "loader.num_workers=0", "data.check_images=false", "data.n_folds=2")


@pytest.fixture(scope="module")
def petfinder(tmp_path_factory):
    return build_regression_demo(tmp_path_factory.mktemp("petfinder") / "comp", n_train=64, n_test=24)


def _cfg(demo_cfg, comp, out, *extra):
    return demo_cfg(comp, out, *TINY, *extra, config=CONFIG)


def test_the_demo_has_petfinders_layout(petfinder):
    train = pd.read_csv(petfinder / "train.csv")
    assert list(train.columns) == ["Id", *PETFINDER_FLAGS, "Pawpularity"]
    assert list(pd.read_csv(petfinder / "test.csv").columns) == ["Id", *PETFINDER_FLAGS]
    assert list(pd.read_csv(petfinder / "sample_submission.csv").columns) == ["Id", "Pawpularity"]
    assert train["Pawpularity"].between(1, 100).all() and train["Id"].str.fullmatch("[0-9a-f]{32}").all()
    assert all((petfinder / "train" / f"{i}.jpg").is_file() for i in train["Id"])


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_folds_train_ensemble_and_score(petfinder, demo_cfg, tmp_path, loss):
    cfg = _cfg(demo_cfg, petfinder, tmp_path / "out", f"loss.name={loss}")
    for k in range(2):
        result = train_fold(cfg, k)
        oof = pd.read_csv(fold_paths(cfg.out_dir, k).oof)
        assert [c for c in oof.columns if c.startswith("prob_")] == ["prob_Pawpularity"]
        rmse = np.sqrt(mean_squared_error(oof["label"], oof["prob_Pawpularity"]))
        assert result["rmse"] == pytest.approx(rmse) and "accuracy" not in result
        assert oof["prob_Pawpularity"].between(1, 100).all()
    out = ensemble(cfg, tta=["identity", "vflip"], weights="auto", out=tmp_path / "sub" / "s.csv")
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["Id", "Pawpularity"] and sub["Pawpularity"].between(1, 100).all()
    assert json.loads(out.with_name("s.blend.json").read_text())["format"] == "auto"
    sol = pd.read_csv(petfinder / "solution.csv").set_index("Id").loc[sub["Id"]]
    scores = score_submission(out, petfinder / "solution.csv", cfg)
    expected = np.sqrt(mean_squared_error(sol["Pawpularity"], sub["Pawpularity"]))
    assert scores["rmse"] == pytest.approx(expected, rel=1e-12)
    assert scores["mae"] == pytest.approx(mean_absolute_error(sol["Pawpularity"], sub["Pawpularity"]), rel=1e-12)


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 100, 50).astype(np.float32)
    pred = (y + rng.normal(0, 10, 50))[:, None]
    assert compute_metric("rmse", y, pred) == pytest.approx(np.sqrt(mean_squared_error(y, pred[:, 0])))
    assert compute_metric("mae", y, pred) == pytest.approx(mean_absolute_error(y, pred[:, 0]))
    assert compute_metric("r2", y, pred) == pytest.approx(r2_score(y, pred[:, 0]))
    assert [metric_spec(m).higher_is_better for m in ("rmse", "mae", "r2")] == [False, False, True]
    with pytest.raises(UserError, match="does not score regression"):
        compute_metric("accuracy", y, pred)


def test_folds_stratify_on_quantile_bins():
    rng = np.random.default_rng(1)
    values = np.sort(rng.exponential(20, 200)).round(1)
    df = pd.DataFrame({"label": values.astype(str)})
    fold = Regression(("y",), target_range=(0.0, 200.0)).split(df, 5, 0, None)
    # every decile of the target is spread over the five folds (4 of its 20 images in each)
    deciles = np.arange(200) // 20
    assert (pd.crosstab(deciles, fold).to_numpy() == 4).all()
    grouped = Regression(("y",), target_range=(0.0, 200.0)).split(df.assign(group=np.arange(200) // 2), 5, 0,
                                                                 pd.Series(np.arange(200) // 2))
    assert all(len(set(grouped[i:i + 2])) == 1 for i in range(0, 200, 2))  # a group stays in one fold


def test_the_bce_head_scales_by_the_range_and_blends_with_a_value_head():
    bce, mse = Regression(("y",), False, (1.0, 100.0), True), Regression(("y",), False, (1.0, 100.0), False)
    z = np.array([[-50.0], [0.0], [3.0]])
    assert bce.activate(z)[:, 0] == pytest.approx([1.0, 50.5, 1 + 99 / (1 + np.exp(-3.0))])
    assert mse.activate(np.array([[-5.0], [40.0], [150.0]]))[:, 0] == pytest.approx([1.0, 40.0, 100.0])  # clipped
    values = np.array([[10.0], [80.0]])
    assert bce.activate(bce.blend_input(values)) == pytest.approx(values)
    # a bce member and an mse member's values, blended with the bce task's rule: their mean
    stack = np.stack([bce.blend_input(values), bce.blend_input(np.array([[20.0], [60.0]]))])
    assert bce.blend(stack, "soft", np.full((2, 1, 1), 0.5))[:, 0] == pytest.approx([15.0, 70.0])
    loss = build_loss(_loss_cfg("bce"), bce, np.zeros(2))
    out, y = torch.tensor([[0.3], [-1.0]]), torch.tensor([1.0, 100.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], torch.tensor([0.0, 1.0]))
    assert float(loss(out, y)) == pytest.approx(float(expected))


def _loss_cfg(name: str):
    from src.core.config import load_config

    return load_config(CONFIG, [f"loss.name={name}"]).loss


def test_mixup_mixes_the_values():
    task = Regression(("y",), False, (1.0, 100.0), False)
    mix = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0, **task.mixup_options(0.0))
    x, y = torch.zeros(4, 3, 8, 8), torch.tensor([10.0, 20.0, 30.0, 40.0])
    _, target = mix(x, task.mixup_target(y))
    mixed = target[:, 0]
    assert mixed.shape == (4,) and (mixed >= 10 - 1e-5).all() and (mixed <= 40 + 1e-5).all()
    # each mixed value is lam * y + (1 - lam) * y flipped, one lam for the batch
    lam = (mixed[0] - y.flip(0)[0]) / (y[0] - y.flip(0)[0])
    assert mixed == pytest.approx(lam * y + (1 - lam) * y.flip(0))


def test_config_section_gives_the_task_its_range(demo_cfg, petfinder, tmp_path):
    task = task_of(_cfg(demo_cfg, petfinder, tmp_path))
    assert task.classes == ("Pawpularity",) and task.target_range == (1.0, 100.0) and task.scaled
    assert task.n_outputs == 1 and "bce" in task.describe()


def test_the_dataset_keeps_fractional_targets():
    from src.data.loaders import ImageDataset

    assert ImageDataset(["a.png"], Regression(("y",)).targets(["37.5"]), None).targets.tolist() == [37.5]
