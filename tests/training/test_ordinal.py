"""Ordinal tasks (data.task=ordinal) on a small copy of the ordinal digits demo (2x2 grids graded 0-4
by their digits of 5 or more): integer grades in, folds stratified by grade, a one-output regression
head (mse, smooth_l1) or a softmax over the grades (ce), OOF grade distributions whose mean is the
score, thresholds between grades fitted on OOF only (quadratic kappa), the grades written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO_CONFIG, TINY
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from src.core.config import load_config
from src.core.runtime import Runtime
from src.core.tasks import expected_grade, grade_probs, make_task
from src.core.utils import UserError
from src.data.folds import fold_counts, load_or_create_folds
from src.demo import build_ordinal_demo
from src.ensembling import pipeline
from src.evaluation.blending import combine
from src.evaluation.decoding import fit_grade_thresholds, rounding_thresholds
from src.evaluation.metrics import check_metric_fits, compute_metric
from src.evaluation.scoring import score_submission
from src.models.losses import GradeRegressionLoss, build_loss
from src.runs.checkpoint import load_checkpoint
from src.runs.layout import fold_paths, oof_probs, read_oof
from src.runs.members import member_oof, open_members
from src.training.trainer import train_fold

ORD_CONFIG = DEMO_CONFIG.with_name("demo_ordinal.yaml")
GRADES = [str(g) for g in range(5)]


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    return build_ordinal_demo(tmp_path_factory.mktemp("ord") / "digits_ordinal", n_train=320, n_test=80)


def _cfg(comp, out, *extra):
    return load_config(ORD_CONFIG, [f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled", *extra])


def _qwk(y, pred):
    return cohen_kappa_score(y, pred, weights="quadratic", labels=range(5))


def test_a_grade_score_travels_as_the_distribution_whose_mean_it_is():
    scores = np.array([-0.7, 0.0, 0.49, 0.51, 2.3, 3.5 - 1e-9, 3.99, 4.0, 6.2])
    p = grade_probs(scores, 5)
    assert np.allclose(p.sum(1), 1) and (p >= 0).all() and ((p > 0).sum(1) <= 2).all()
    assert np.allclose(expected_grade(p), np.clip(scores, 0, 4))  # the mean is the clipped score
    assert list(p.argmax(1)) == [0, 0, 0, 1, 2, 3, 4, 4, 4]  # the argmax is its rounding
    task = make_task("ordinal", tuple(GRADES), regression=True)
    assert task.n_outputs == 1 and np.allclose(task.activate(scores[:, None]), p)
    logits = np.random.default_rng(0).normal(size=(6, 5))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ce = make_task("ordinal", tuple(GRADES))  # a softmax head: the expected grade under its softmax
    assert ce.n_outputs == 5 and np.allclose(expected_grade(ce.activate(logits)), soft @ np.arange(5))


def test_blends_average_the_grade_scores_whatever_the_head():
    task = make_task("ordinal", tuple(GRADES), regression=True)
    reg = np.array([[[1.0], [3.2]], [[3.0], [4.4]]])  # two predictors' regression outputs (K, N, 1)
    blended = combine(reg, "soft", np.array([1.0, 3.0]), task)
    assert np.allclose(expected_grade(blended), [2.5, 4.0])  # 0.25 * 1 + 0.75 * 3; 0.25 * 3.2 + 0.75 * 4 (clipped)
    logits = np.random.default_rng(1).normal(size=(2, 3, 5))  # softmax heads blend their expected grades
    expected = np.mean([np.exp(z) / np.exp(z).sum(1, keepdims=True) @ np.arange(5) for z in logits], axis=0)
    assert np.allclose(expected_grade(combine(logits, "soft", None, task)), expected)
    with pytest.raises(UserError, match="voting=rank does not apply to ordinal"):
        combine(reg, "rank", None, task)


def test_thresholds_between_grades_beat_rounding_on_a_biased_regressor():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 600)
    probs = grade_probs(0.7 * y + 0.3 + rng.normal(0, 0.25, len(y)), 5)  # shrunk toward the middle
    th = fit_grade_thresholds("qwk", y, probs)
    assert th.shape == (4,) and (np.diff(th) > 0).all()
    fitted = _qwk(y, np.digitize(expected_grade(probs), th))
    assert fitted == pytest.approx(compute_metric("qwk", y, probs, th))
    assert fitted > _qwk(y, probs.argmax(1)) + 0.02  # argmax = rounding
    assert compute_metric("qwk", y, probs, rounding_thresholds(5)) == pytest.approx(_qwk(y, probs.argmax(1)))
    assert compute_metric("accuracy", y, probs, th) == pytest.approx(np.mean(np.digitize(expected_grade(probs), th) == y))


def test_what_does_not_fit_an_ordinal_task_is_refused(comp, tmp_path):
    with pytest.raises(UserError, match="does not score ordinal"):
        check_metric_fits("roc_auc", 5, make_task("ordinal"))
    with pytest.raises(UserError, match="loss.name=mse regresses a grade"):
        load_config(DEMO_CONFIG, ["loss.name=mse"])
    with pytest.raises(UserError, match="integer grades"):
        make_task("ordinal", ("mild", "none", "severe"))
    with pytest.raises(UserError, match="loss.smoothing"):
        build_loss(_cfg(comp, tmp_path, "loss.smoothing=0.1").loss, make_task("ordinal", map(str, range(5)), regression=True), np.zeros(4, int))
    bad = tmp_path / "bad"
    shutil.copytree(comp, bad, ignore=shutil.ignore_patterns("test"))
    train = pd.read_csv(bad / "train.csv", dtype=str)
    train.loc[0, "diagnosis"] = "2.5"
    train.to_csv(bad / "train.csv", index=False)
    with pytest.raises(UserError, match="integer grades"):
        load_or_create_folds(_cfg(bad, tmp_path))
    assert not list(tmp_path.rglob("*_k5_*"))  # no folds file written


def test_the_regression_losses_are_torchs():
    out, y = torch.randn(8, 1), torch.randint(0, 5, (8,))
    assert GradeRegressionLoss("mse")(out, y) == pytest.approx(float(((out[:, 0] - y) ** 2).mean()), abs=1e-6)
    d = (out[:, 0] - y).abs()
    huber = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    assert GradeRegressionLoss("smooth_l1")(out, y) == pytest.approx(float(huber), abs=1e-6)


def test_folds_are_stratified_by_grade(comp, tmp_path):
    df, classes, _ = load_or_create_folds(_cfg(comp, tmp_path))
    assert classes == GRADES
    counts = fold_counts(df, classes, make_task("ordinal", classes)).to_numpy()
    assert (np.abs(counts - counts.sum(1, keepdims=True) / 5) <= 1).all()


@pytest.fixture(scope="module")
def trained(comp, tmp_path_factory):
    """Both folds of the small ordinal demo with a regression head (mse), a few real steps each."""
    out = tmp_path_factory.mktemp("ord_trained")
    cfg = _cfg(comp, out, *TINY, "train.epochs=2", "train.limit_batches=null", "data.n_folds=2", "train.keep_top=2")
    results = [train_fold(cfg, k) for k in (0, 1)]
    return cfg, results


def test_a_regression_head_trains_and_its_oof_is_scored_on_rounded_grades(trained):
    cfg, results = trained
    fp = fold_paths(cfg.out_dir, 0)
    ckpt = load_checkpoint(fp.best)
    head = [v for k, v in ckpt["model"].items() if k.endswith("weight")][-1]
    assert head.shape[0] == 1 and ckpt["config"]["loss"]["name"] == "mse"  # the checkpoint says which head
    oof = read_oof(fp.oof, GRADES)
    probs = oof_probs(oof, GRADES)
    assert ((probs > 1e-9).sum(1) <= 2).all()  # grade distributions of a score, not a softmax
    y = oof["target"].to_numpy()
    assert results[0]["qwk"] == pytest.approx(_qwk(y, np.rint(expected_grade(probs) - 1e-9)))


def _blend(cfg, out, capsys):
    path = pipeline.run(cfg, [str(cfg.experiment.name)], ["identity", "hflip"], "equal", "soft", out, None)
    return path, capsys.readouterr().out


def test_the_blend_writes_the_grades_its_oof_fitted_thresholds_give(trained, comp, tmp_path, capsys):
    cfg, _ = trained
    out, printed = _blend(cfg, tmp_path / "sub.csv", capsys)
    saved = json.loads((tmp_path / "sub_thresholds.json").read_text())
    assert list(saved) == ["0|1", "1|2", "2|3", "3|4"]
    th = np.array(list(saved.values()))
    assert (np.diff(th) >= 0).all()
    dist = pd.read_csv(tmp_path / "sub_probs.csv", dtype={"id": str})[GRADES].to_numpy()
    sub = pd.read_csv(out, dtype=str)
    assert list(sub.columns) == ["id", "diagnosis"] and "format label" in printed
    assert list(sub["diagnosis"]) == [GRADES[g] for g in np.digitize(expected_grade(dist), th)]
    # the printed OOF score is the kappa of the OOF blend decided with exactly these thresholds
    member = open_members(cfg, [str(cfg.experiment.name)])[0]
    table, scores = member_oof(member, ["identity", "hflip"], Runtime.from_cfg(cfg.runtime), cfg.loader)
    y = table["label"].astype(int).to_numpy()
    written = _qwk(y, np.digitize(np.clip(scores[:, 0], 0, 4), th))
    printed_score = float(printed.split("of what is written: ")[1].split()[0])
    rounded = float(printed.split("rounded: ")[1].split(",")[0])
    assert printed_score == pytest.approx(written, abs=5e-5) and printed_score >= rounded
    # src.score reads the grades written
    truth = pd.read_csv(comp / "solution.csv").set_index("id").loc[sub["id"], "diagnosis"].to_numpy()
    assert score_submission(out, comp / "solution.csv", cfg)["qwk"] == pytest.approx(
        _qwk(truth, sub["diagnosis"].astype(int).to_numpy()))


def test_grade_thresholds_never_see_the_test_images(trained, comp, tmp_path, capsys):
    cfg, _ = trained
    other = tmp_path / "other" / comp.name
    shutil.copytree(comp, other, ignore=shutil.ignore_patterns("test"))
    (other / "test").mkdir()
    for p in (comp / "test").iterdir():
        Image.open(p).transpose(Image.Transpose.ROTATE_90).save(other / "test" / p.name)
    _blend(cfg, tmp_path / "a.csv", capsys)
    _, again = _blend(cfg, tmp_path / "a2.csv", capsys)
    assert "0 computed" in again  # the regression head's (N, 1) predictions are read back from the cache
    _blend(cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": str(other)})}), tmp_path / "b.csv", capsys)
    assert (tmp_path / "a_probs.csv").read_bytes() != (tmp_path / "b_probs.csv").read_bytes()
    assert (tmp_path / "a_thresholds.json").read_text() == (tmp_path / "b_thresholds.json").read_text()
    with pytest.raises(UserError, match="needs thresholds fitted on the OOF report"):
        pipeline.run(cfg, [str(cfg.experiment.name)], ["identity"], "equal", "soft", tmp_path / "c.csv", None,
                     report=False)
    with pytest.raises(UserError, match="does not write grades"):
        pipeline.run(cfg, [str(cfg.experiment.name)], ["identity"], "equal", "soft", tmp_path / "d.csv", "proba")
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize("loss", ["ce", "smooth_l1"])
def test_a_softmax_head_or_smooth_l1_with_mixup_trains_an_ordinal_fold(comp, tmp_path, loss):
    cfg = _cfg(comp, tmp_path, *TINY, f"loss.name={loss}", "train.mixup=0.4", "train.cutmix=1.0", "data.n_folds=2")
    result = train_fold(cfg, 0)
    fp = fold_paths(cfg.out_dir, 0)
    probs = oof_probs(read_oof(fp.oof, GRADES), GRADES)
    head = [v for k, v in load_checkpoint(fp.best)["model"].items() if k.endswith("weight")][-1]
    assert head.shape[0] == (5 if loss == "ce" else 1)
    assert np.isfinite(result["qwk"]) and np.allclose(probs.sum(1), 1)


def _oof(cfg, name=None):
    exp = cfg.out_dir if name is None else cfg.out_dir.parent / name
    oof = pd.concat([read_oof(fold_paths(exp, k).oof, GRADES) for k in (0, 1)], ignore_index=True)
    return oof, oof["label"].astype(int).to_numpy(), oof_probs(oof, GRADES)


def test_the_report_shows_rounded_grades_and_ranks_images_by_their_grade_error(trained):
    from src.analysis.report import build_report

    cfg, _ = trained
    r = build_report(cfg, n_wrong=4, n_cam=2)
    oof, y, probs = _oof(cfg)
    score = expected_grade(probs)
    rounded = probs.argmax(1)
    assert (r.counts == pd.crosstab(y, rounded).reindex(index=range(5), columns=range(5), fill_value=0).to_numpy()).all()
    sus = r.suspects.set_index("id").loc[oof["id"]]
    assert sus["loss"].to_numpy() == pytest.approx(np.abs(score - y)) and r.suspects["loss"].is_monotonic_decreasing
    assert list(sus["predicted"]) == [GRADES[g] for g in rounded]
    assert "qwk" in r.cv and "log_loss" not in r.cv  # no metric on class probabilities for grades
    assert r.cv.iloc[-1]["qwk"] == pytest.approx(_qwk(y, rounded))


def test_the_probe_reads_the_expected_grade_and_submits_grades_between_fitted_thresholds(trained, tmp_path):
    from src.analysis.probe import run_probe

    cfg, _ = trained
    res = run_probe(cfg, "logreg", tmp_path / "probe.csv")
    probs = res.oof[[f"prob_{g}" for g in GRADES]].to_numpy()
    assert ((probs > 1e-9).sum(1) <= 2).all()  # grade distributions of the classifier's expected grade
    y = res.oof["label"].astype(int).to_numpy()
    assert res.scores["oof"]["qwk"] == pytest.approx(_qwk(y, probs.argmax(1)))
    th = np.array(list(json.loads((tmp_path / "probe_thresholds.json").read_text()).values()))
    test = pd.read_csv(tmp_path / "probe_probs.csv", dtype={"id": str})[GRADES].to_numpy()
    sub = pd.read_csv(tmp_path / "probe.csv")
    assert list(sub["diagnosis"]) == list(np.digitize(expected_grade(test), th))


def test_ordinal_pseudo_labels_are_the_nearest_grade_of_sure_scores(trained, tmp_path):
    from src.data.folds import fold_tables
    from src.ensembling.pseudo_labels import make_pseudo

    cfg, _ = trained
    name = [str(cfg.experiment.name)]
    path = make_pseudo(cfg, name, ["identity"], "equal", None, 0.7, False, 1, tmp_path / "p.csv")
    table = pd.read_csv(path)
    probs = table[[f"prob_{g}" for g in GRADES]].to_numpy()
    score = expected_grade(probs)
    assert len(table) and (np.abs(score - np.rint(score)) <= 0.3 + 1e-9).all()
    assert list(table["label"]) == list(np.rint(score).astype(int))
    with_pseudo = cfg.model_copy(update={"data": cfg.data.model_copy(update={"pseudo": str(path)})})
    train, val, _ = fold_tables(with_pseudo, 1)
    pseudo = train["pseudo"].to_numpy(bool)
    assert pseudo.sum() == len(table) and not set(val["id"]) & set(train.loc[pseudo, "id"])
    assert (train.loc[pseudo, "target"].to_numpy() == table["label"].to_numpy()).all()
    with pytest.raises(UserError, match="drop --soft"):
        make_pseudo(cfg, name, ["identity"], "equal", None, None, True, 1, tmp_path / "s.csv")
    with pytest.raises(UserError, match="loss.distill_from"):
        _cfg(cfg.data.dir, tmp_path, f"loss.distill_from={name[0]}")


def test_averaged_checkpoints_of_a_regression_head_are_validated_as_grades(trained):
    from src.training.averaged_experiment import average_experiment

    cfg, _ = trained
    report = average_experiment(cfg, str(cfg.experiment.name), top=2)
    _, y, probs = _oof(cfg, f"{cfg.experiment.name}_top2")
    assert ((probs > 1e-9).sum(1) <= 2).all()
    assert report["oof"]["qwk"] == pytest.approx(_qwk(y, probs.argmax(1)))


def test_a_stacker_over_grade_scores_is_scored_nested_with_thresholds_fitted_after_it(trained, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg, _ = trained
    pipeline.run(cfg, [str(cfg.experiment.name)], ["identity"], "equal", "soft", tmp_path / "st.csv", None,
                 stack="logreg")
    printed = capsys.readouterr().out
    member = open_members(cfg, [str(cfg.experiment.name)])[0]
    table, scores = member_oof(member, None, Runtime.from_cfg(cfg.runtime), cfg.loader)
    y, folds = table["label"].astype(int).to_numpy(), table["fold"].to_numpy()
    nested = np.zeros(len(y))
    for k in (0, 1):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=42))
        clf.fit(scores[folds != k], y[folds != k])
        nested[folds == k] = clf.predict_proba(scores[folds == k]) @ clf.classes_
    th = np.array(list(json.loads((tmp_path / "st_thresholds.json").read_text()).values()))
    written = float(printed.split("of what is written: ")[1].split()[0])
    assert written == pytest.approx(_qwk(y, np.digitize(nested, th)), abs=5e-5)
