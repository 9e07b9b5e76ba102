"""Several images per answer, end to end on every task kind: the real train (--fold all), ensemble and
score on a grouped world (src.data.answers), checked against values recomputed here with pandas from
the files the stages wrote: the CV is the answers' metric, the submission has the sample's ids in
order, and each answer's prediction is the mean (or max) of its images' cached predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import GROUPED_KINDS, TINY

import src.ensemble as ensemble
import src.kaggle_kernel as kaggle_kernel
import src.score as score
import src.train as train
from src.core.cli import run_cli
from src.core.config import load_config
from src.core.tasks import task_of
from src.evaluation.blending import combine
from src.evaluation.metrics import compute_metric


def _argv(comp: Path, out: Path, config: Path, extra, *more) -> list[str]:
    return ["--config", str(config), *TINY, "data.n_folds=2", f"data.dir={comp}", f"experiment.output_dir={out}",
            "wandb.mode=disabled", "runtime.device=cpu", *extra, *more]


def _by_hand(oof: pd.DataFrame, classes: list[str], how: str) -> tuple[pd.Series, np.ndarray]:
    """The answers' labels and probabilities from image rows, grouped by pandas (first-seen order)."""
    groups = oof.groupby("answer", sort=False)
    probs = getattr(groups[[f"prob_{c}" for c in classes]], how)()
    return groups["label"].first(), probs.to_numpy()


def _score_of(task, probs: np.ndarray) -> np.ndarray:
    """What each kind's blends average, linear in the probabilities: a grade's mean for ordinal, else the rows."""
    return probs @ np.arange(probs.shape[1]) if task.name == "ordinal" else probs


def _train_and_blend(kind, grouped_competition, tmp_path, *more) -> tuple:
    comp, config, extra = grouped_competition(kind)
    argv = _argv(comp, tmp_path / "outputs", config, extra, *more)
    run_cli(train.main, ["--fold", "all", *argv])
    cfg = load_config(config, argv[2:])
    sub = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*argv, "--tta", "identity", "--out", str(sub)])
    return comp, cfg, argv, sub


def _cache(cfg, fold: int) -> np.ndarray:
    (path,) = (cfg.out_dir / "preds" / f"fold{fold}").glob("test-identity-*.npy")
    return np.load(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", GROUPED_KINDS)
def test_cv_and_submission_are_the_answers(kind, grouped_competition, tmp_path, capsys):
    comp, cfg, argv, sub = _train_and_blend(kind, grouped_competition, tmp_path)
    classes = json.loads((cfg.out_dir / "fold0" / "done.json").read_text())["classes"]
    task, metric = task_of(cfg, classes), cfg.metric.name

    # the CV: the metric of the answers aggregated by hand from oof.csv
    oof = pd.concat([pd.read_csv(cfg.out_dir / f"fold{k}" / "oof.csv", dtype={"id": str, "label": str,
                                                                              "answer": str}, keep_default_na=False)
                     for k in (0, 1)], ignore_index=True)
    labels, probs = _by_hand(oof, classes, "mean")
    cv = json.loads((cfg.out_dir / "cv.json").read_text())
    assert cv["n_answers"] == len(labels) < cv["n_oof"] == len(oof)
    assert cv["oof"][metric] == pytest.approx(compute_metric(metric, task.targets(labels), probs), abs=1e-9)

    # the submission: the sample's ids in order, each answer the mean of its images' cached predictions
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str, keep_default_na=False)
    written = pd.read_csv(sub, dtype=str, keep_default_na=False)
    assert written["prediction_id"].tolist() == sample["prediction_id"].tolist()
    assert list(written.columns) == list(sample.columns)
    images = pd.read_csv(comp / "test.csv", dtype=str)
    images["answer"] = images["patient_id"] + "_" + images["laterality"]
    order = {a: i for i, a in enumerate(sample["prediction_id"])}
    images = images.iloc[np.argsort(images["answer"].map(order).to_numpy(), kind="stable")]
    # the folds' cached logits blended per image as the member blends them (not what is under test here)
    per_image = _score_of(task, combine(np.stack([_cache(cfg, k) for k in (0, 1)]), "soft", task=task))
    expected = pd.DataFrame(np.reshape(per_image, (len(images), -1))).groupby(images["answer"].to_numpy()).mean()
    blended = pd.read_csv(sub.with_name("sub_probs.csv")).set_index("prediction_id")
    got = np.reshape(_score_of(task, blended.to_numpy()), (len(blended), -1))
    assert np.allclose(got, expected.loc[blended.index].to_numpy(), atol=1e-5)

    # src.score scores the answers against the solution's
    capsys.readouterr()
    run_cli(score.main, [str(sub), *argv])
    assert metric in capsys.readouterr().out


@pytest.mark.slow
def test_binary_max_and_pfbeta_on_answers(grouped_competition, tmp_path):
    comp, cfg, argv, sub = _train_and_blend("binary", grouped_competition, tmp_path, "data.aggregate=max",
                                            "metric.name=pfbeta")
    oof = pd.concat([pd.read_csv(cfg.out_dir / f"fold{k}" / "oof.csv", dtype=str) for k in (0, 1)])
    oof[["prob_0", "prob_1"]] = oof[["prob_0", "prob_1"]].astype(float)
    answers = oof.groupby("answer", sort=False)
    y, p1 = answers["label"].first().astype(int).to_numpy(), answers["prob_1"].max().to_numpy()
    by_hand = compute_metric("pfbeta", y, np.stack([1 - p1, p1], 1))
    per_image = compute_metric("pfbeta", oof["label"].astype(int).to_numpy(), oof[["prob_0", "prob_1"]].to_numpy())
    cv = json.loads((cfg.out_dir / "cv.json").read_text())["oof"]["pfbeta"]
    assert cv == pytest.approx(by_hand, abs=1e-9) and by_hand != pytest.approx(per_image, abs=1e-6)
    images = pd.read_csv(comp / "test.csv", dtype=str)
    images["answer"] = images["patient_id"] + "_" + images["laterality"]
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    order = {a: i for i, a in enumerate(sample["prediction_id"])}
    images = images.iloc[np.argsort(images["answer"].map(order).to_numpy(), kind="stable")]
    softmax = [np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in (_cache(cfg, 0), _cache(cfg, 1))]
    p = pd.Series(np.mean(softmax, axis=0)[:, 1]).groupby(images["answer"].to_numpy()).max()
    written = pd.read_csv(sub)  # the binary format: the positive probability, RSNA's
    assert np.allclose(written.iloc[:, 1], p.loc[written["prediction_id"]].to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_the_cv_per_answer_differs_from_the_per_image_one(grouped_competition, tmp_path):
    comp, config, extra = grouped_competition("multiclass")
    argv = _argv(comp, tmp_path / "outputs", config, extra)
    run_cli(train.main, ["--fold", "0", *argv])
    oof = pd.read_csv(tmp_path / "outputs" / "demo" / "fold0" / "oof.csv", dtype={"label": str, "answer": str})
    done = json.loads((tmp_path / "outputs" / "demo" / "fold0" / "done.json").read_text())
    classes = done["classes"]
    per_image = compute_metric("accuracy", oof["label"].map(classes.index).to_numpy(),
                               oof[[f"prob_{c}" for c in classes]].to_numpy())
    labels, probs = _by_hand(oof, classes, "mean")
    assert done["accuracy"] == pytest.approx(compute_metric("accuracy", labels.map(classes.index).to_numpy(), probs))
    assert done["accuracy"] != pytest.approx(per_image)
    history = pd.read_csv(tmp_path / "outputs" / "demo" / "fold0" / "history.csv")  # the epoch's validation metric
    assert history["val_accuracy"].iloc[-1] == pytest.approx(done["accuracy"])


@pytest.mark.slow
def test_tta_auto_stacking_and_the_kaggle_rehearsal_write_the_answers(grouped_competition, tmp_path, capsys):
    comp, cfg, argv, sub = _train_and_blend("binary", grouped_competition, tmp_path)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    for flags in (["--tta", "auto", "identity", "vflip"], ["--stack", "logreg", "--tta", "identity"]):
        other = tmp_path / f"{flags[1]}.csv"
        run_cli(ensemble.main, [*argv, *flags, "--out", str(other)])
        assert pd.read_csv(other, dtype=str)["prediction_id"].tolist() == sample["prediction_id"].tolist()
    build = ["--out", str(tmp_path / "build"), *argv]
    run_cli(kaggle_kernel.main, ["build", "--experiments", cfg.experiment.name, "--tta", "identity", "--no-wheels",
                                 "--dataset", "someone/grouped", "--kernel", "someone/grouped-inference", *build])
    run_cli(kaggle_kernel.main, ["rehearse", *build])
    kernel, local = pd.read_csv(tmp_path / "build" / "rehearsal" / "submission.csv"), pd.read_csv(sub)
    assert kernel["prediction_id"].tolist() == local["prediction_id"].tolist()
    # the notebook predicts with its own batches (TINY's loader.batch_size is the command line's): float32 rounding
    assert np.allclose(kernel["label"], local["label"], rtol=0, atol=1e-6)
