"""Multi-label tasks (data.task=multilabel) on the multi-label digits demo (2x2 grids tagged with the
digits they show): tags or one 0/1 column per label in, folds stratified per label, a sigmoid per
label trained with binary cross-entropy (or its focal form, or timm's asymmetric loss), OOF
probabilities scored per label; the stages that blend softmax outputs refuse it in one sentence."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO_CONFIG, TINY
from PIL import Image
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from src import kaggle_kernel
from src.core.cli import run_cli
from src.core.config import load_config
from src.core.runtime import Runtime
from src.core.tasks import make_task
from src.core.utils import UserError
from src.data.folds import fold_counts, load_or_create_folds
from src.data.tables import load_train_table
from src.demo import build_multilabel_demo
from src.ensembling import pipeline
from src.evaluation.metrics import check_metric_fits
from src.evaluation.scoring import score_submission
from src.models.losses import MultiLabelLoss, build_loss
from src.runs.layout import fold_paths, oof_probs, read_oof
from src.runs.members import member_oof, open_members
from src.training.trainer import train_fold

ML_CONFIG = DEMO_CONFIG.with_name("demo_multilabel.yaml")
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    return build_multilabel_demo(tmp_path_factory.mktemp("ml") / "digits_multilabel")  # the demo as users get it


def _cfg(comp, out, *extra):
    return load_config(ML_CONFIG, [f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled", *extra])


def test_the_demo_holds_tag_lists_including_images_without_a_label(comp):
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    tags = train["label"].str.split()
    assert (tags.str.len() == 0).any() and (tags.str.len() >= 2).any()
    assert set(t for ts in tags for t in ts) == set(DIGITS)
    assert list(pd.read_csv(comp / "solution.csv", dtype=str).columns) == ["id", "label"]


def test_tags_and_one_hot_columns_give_the_same_table(comp, tmp_path):
    from_tags = load_train_table(_cfg(comp, tmp_path).data)
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    onehot = pd.DataFrame({"id": train["id"], **{f"d{d}": train["label"].str.split().map(lambda t, d=d: int(d in t))
                                                   for d in DIGITS}})
    other = tmp_path / "onehot"
    other.mkdir()
    (other / "train").symlink_to(comp / "train")
    onehot.to_csv(other / "train.csv", index=False)
    from_cols = load_train_table(_cfg(other, tmp_path, "data.label_cols=all").data)
    assert list(from_cols["label"].str.replace("d", "")) == list(from_tags["label"])
    onehot.loc[0, "d3"] = 2
    onehot.to_csv(other / "train.csv", index=False)
    with pytest.raises(UserError, match="must hold 0 or 1"):
        load_train_table(_cfg(other, tmp_path, "data.label_cols=all").data)


@pytest.mark.parametrize("sep", [",", ";", "|"])
def test_tags_with_another_separator_name_data_label_sep(comp, tmp_path, sep):
    """Tags like `6,9` under the default space separator would be one "label" per combination."""
    other = tmp_path / "sep"
    other.mkdir()
    (other / "train").symlink_to(comp / "train")
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    train.assign(label=train["label"].str.replace(" ", sep)).to_csv(other / "train.csv", index=False)
    with pytest.raises(UserError, match=f"set data.label_sep='{re.escape(sep)}'"):
        load_train_table(_cfg(other, tmp_path).data)
    assert load_train_table(_cfg(other, tmp_path, f"data.label_sep='{sep}'").data)["label"].tolist() == \
        load_train_table(_cfg(comp, tmp_path).data)["label"].tolist()


def test_tags_that_split_into_one_label_per_image_name_data_label_sep(comp, tmp_path):
    other = tmp_path / "one_each"
    other.mkdir()
    (other / "train").symlink_to(comp / "train")
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    train.assign(label=[f"{t.replace(' ', '+')}x{i}" for i, t in enumerate(train["label"])]).to_csv(
        other / "train.csv", index=False)
    with pytest.raises(UserError, match="nearly one label per image"):
        load_train_table(_cfg(other, tmp_path).data)


def test_folds_spread_every_label_evenly(comp, tmp_path):
    cfg = _cfg(comp, tmp_path)
    df, classes, path = load_or_create_folds(cfg)
    assert classes == DIGITS and path.name.endswith("_multilabel.csv") and "target" not in df
    counts = fold_counts(df, classes, make_task("multilabel", classes))
    ideal = counts.sum(axis=1).to_numpy()[:, None] / cfg.data.n_folds
    assert (np.abs(counts.to_numpy() - ideal) <= 1).all(), counts


def test_the_multilabel_losses():
    logits, y = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert MultiLabelLoss()(logits, y) == pytest.approx(float(bce), abs=1e-6)
    smoothed = torch.nn.functional.binary_cross_entropy_with_logits(logits, y * 0.8 + 0.1)
    assert MultiLabelLoss(smoothing=0.2)(logits, y) == pytest.approx(float(smoothed), abs=1e-6)
    assert MultiLabelLoss(gamma=2.0)(logits, y) < MultiLabelLoss()(logits, y)
    cfg = load_config(ML_CONFIG, ["loss.class_weights=balanced"]).loss
    targets = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    assert build_loss(cfg, make_task("multilabel", map(str, range(2))), targets).pos_weight.tolist() == pytest.approx([1 / 3, 3.0])
    asl = build_loss(load_config(ML_CONFIG, ["loss.name=asl"]).loss, make_task("multilabel", map(str, range(4))), y.numpy())
    assert type(asl).__name__ == "AsymmetricLossMultiLabel" and float(asl(logits, y)) > 0
    with pytest.raises(UserError, match="multi-label"):
        build_loss(load_config(ML_CONFIG, ["loss.name=asl"]).loss, make_task("multiclass", "abcd"), np.zeros(6, int))


def test_a_fold_trains_sigmoid_outputs_scored_per_label(comp, tmp_path):
    cfg = _cfg(comp, tmp_path, *TINY, "train.epochs=2", "train.limit_batches=null", "train.min_steps=0", "data.n_folds=2")
    result = train_fold(cfg, 0)
    fp = fold_paths(cfg.out_dir, 0)
    oof = read_oof(fp.oof, DIGITS)
    probs = oof_probs(oof, DIGITS)
    y = make_task("multilabel", tuple(DIGITS)).targets(oof["label"])
    assert "target" not in oof and not np.allclose(probs.sum(1), 1.0)  # a sigmoid per label, not a softmax
    assert result["f1_macro"] == pytest.approx(f1_score(y, probs >= 0.5, average="macro", zero_division=0))
    history = pd.read_csv(fp.history)
    best = history.loc[history["epoch"] == result["best_epoch"]].iloc[0]
    bce = np.mean([log_loss(y[:, j], probs[:, j], labels=[0, 1]) for j in range(10)])
    assert best["val_loss"] == pytest.approx(bce, rel=1e-4)  # the validation loss is the per-label BCE
    assert (fp.dir / "label_scores.png").is_file() and not fp.confusion.is_file()


def test_mixup_and_cutmix_mix_the_multi_hot_targets(comp, tmp_path):
    """timm's Mixup in its multi-label mode: mixed 0/1 rows, trained with the per-label loss."""
    cfg = _cfg(comp, tmp_path, *TINY, "train.mixup=0.4", "train.cutmix=1.0", "data.n_folds=2")
    from src.training.trainer import optimization, setup_fold

    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    optimization(s)
    x, y = next(iter(s.train_loader))
    torch.manual_seed(0)
    _, target = s.mixup(x.clone(), y)
    assert target.shape == y.shape and ((target > 0) & (target < 1)).any()  # mixed, not one-hot of a class
    lam = None
    for i in range(len(y)):  # every row is lam * its own labels + (1 - lam) * the flipped row's
        a, b = y[i], y.flip(0)[i]
        differ = a != b
        if differ.any():
            row_lam = float(target[i][differ & (a == 1)].max()) if (differ & (a == 1)).any() else \
                1 - float(target[i][differ & (b == 1)].max())
            lam = row_lam if lam is None else lam
            assert torch.allclose(target[i], lam * a + (1 - lam) * b, atol=1e-6)
    assert np.isfinite(train_fold(cfg, 0)["f1_macro"])


@pytest.fixture(scope="module")
def trained(comp, tmp_path_factory):
    """Both folds of the multi-label demo, a few real steps each."""
    out = tmp_path_factory.mktemp("ml_trained")
    cfg = _cfg(comp, out, *TINY, "train.epochs=2", "train.limit_batches=null", "train.min_steps=0", "data.n_folds=2", "train.keep_top=2")
    for k in (0, 1):
        train_fold(cfg, k)
    return cfg


def _thresholds(path) -> np.ndarray:
    th = json.loads(path.read_text())
    assert list(th) == DIGITS
    return np.array([th[d] for d in DIGITS])


def _blend(cfg, out, capsys, *extra):
    path = pipeline.run(cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update=dict(extra))}),
                        [str(cfg.experiment.name)], ["identity", "hflip"], "equal", "soft", out, None)
    return path, capsys.readouterr().out if capsys is not None else ""


def test_the_blend_writes_the_tags_its_oof_fitted_thresholds_give(trained, comp, tmp_path, capsys):
    out, printed = _blend(trained, tmp_path / "sub.csv", capsys)
    thresholds = _thresholds(tmp_path / "sub_thresholds.json")
    probs = pd.read_csv(tmp_path / "sub_probs.csv", dtype={"id": str})[DIGITS].to_numpy()
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    expected = [" ".join(d for d, p, th in zip(DIGITS, row, thresholds) if p >= th) for row in probs]
    assert list(sub["label"]) == expected and "format tags" in printed
    # the printed OOF score is the score of the OOF blend decided with exactly these thresholds
    task = make_task("multilabel", tuple(DIGITS))
    member = open_members(trained, [str(trained.experiment.name)])[0]
    table, logits = member_oof(member, ["identity", "hflip"], Runtime.from_cfg(trained.runtime), trained.loader)
    y = task.targets(table["label"])
    decided = (task.activate(logits) >= thresholds).astype(int)
    printed_score = float(printed.split("of what is written: ")[1].split()[0])
    assert printed_score == pytest.approx(f1_score(y, decided, average="macro", zero_division=0), abs=5e-5)
    # and src.score reads the tags file as the decisions it holds
    solution = pd.read_csv(comp / "solution.csv", dtype=str, keep_default_na=False).set_index("id").loc[sub["id"]]
    truth = task.targets(solution["label"])
    scores = score_submission(out, comp / "solution.csv", trained)
    assert scores["f1_macro"] == pytest.approx(f1_score(truth, task.targets(sub["label"]), average="macro",
                                                        zero_division=0))


def test_thresholds_never_see_the_test_images(trained, comp, tmp_path, capsys):
    """Another test set (the same images flipped): other test predictions, the same thresholds."""
    other = tmp_path / "other" / comp.name  # the same folder name: the same split file
    shutil.copytree(comp, other, ignore=shutil.ignore_patterns("test"))
    (other / "test").mkdir()
    for p in (comp / "test").iterdir():
        Image.open(p).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(other / "test" / p.name)
    _blend(trained, tmp_path / "a.csv", capsys)
    moved = trained.model_copy(update={"data": trained.data.model_copy(update={"dir": str(other)})})
    _blend(moved, tmp_path / "b.csv", capsys)
    assert (tmp_path / "a_probs.csv").read_bytes() != (tmp_path / "b_probs.csv").read_bytes()
    assert (tmp_path / "a_thresholds.json").read_text() == (tmp_path / "b_thresholds.json").read_text()


def test_global_and_fixed_thresholds_and_at_least_one_label(trained, tmp_path, capsys):
    _blend(trained, tmp_path / "g.csv", capsys, ("threshold", "global"))
    assert len(set(_thresholds(tmp_path / "g_thresholds.json"))) == 1
    _blend(trained, tmp_path / "f.csv", capsys, ("threshold", 0.3), ("min_labels", 1))
    assert set(_thresholds(tmp_path / "f_thresholds.json")) == {0.3}
    assert (pd.read_csv(tmp_path / "f.csv", dtype=str, keep_default_na=False)["label"] != "").all()
    planet = trained.model_copy(update={"metric": trained.metric.model_copy(update={"name": "f2_samples"})})
    _, printed = _blend(planet, tmp_path / "p.csv", capsys)  # Planet's metric: mean F2 per image
    assert "OOF f2_samples of what is written" in printed
    with pytest.raises(UserError, match="voting=hard does not apply"):
        pipeline.run(trained, [str(trained.experiment.name)], ["identity"], "equal", "hard", tmp_path / "h.csv", None)
    assert not (tmp_path / "h.csv").exists()


def test_what_does_not_fit_a_multilabel_task_is_refused(comp, tmp_path):
    with pytest.raises(UserError, match="does not score multi-label"):
        check_metric_fits("qwk", 10, make_task("multilabel"))
    with pytest.raises(UserError, match="asl"):
        load_config(DEMO_CONFIG, ["loss.name=asl"])
    with pytest.raises(UserError, match="data.task=multilabel"):
        load_train_table(load_config(DEMO_CONFIG, [f"data.dir={comp}"]).data)  # tags under multiclass


def test_the_kaggle_bundle_carries_the_thresholds_and_rehearses_the_local_submission(trained, comp, tmp_path, capsys):
    """The bundle fits the thresholds on OOF when it is built and the offline notebook decides with
    them: the rehearsed submission is byte-identical to src.ensemble's with the same numbers."""
    root = tmp_path / "kernel"
    shutil.copytree(trained.out_dir.parent, root / "outputs")
    args = ["--config", str(ML_CONFIG), "--out", str(root / "build"), f"data.dir={comp}",
            f"experiment.output_dir={root / 'outputs'}", "data.n_folds=2", "loader.num_workers=0", "wandb.mode=disabled"]
    run_cli(kaggle_kernel.main, ["build", *args, "--experiments", str(trained.experiment.name), "--tta", "identity",
                                 "hflip", "--no-wheels"])
    manifest = json.loads((root / "build" / "dataset" / "MANIFEST.json").read_text())
    assert len(manifest["thresholds"]) == 10 and manifest["format"] == "auto"
    run_cli(kaggle_kernel.main, ["rehearse", *args])
    assert "submission checked" in capsys.readouterr().out
    cfg = _cfg(comp, root / "outputs", "data.n_folds=2", "loader.num_workers=0")
    local = pipeline.run(cfg, manifest["members"], manifest["views"], manifest["weights"], manifest["voting"],
                         root / "local.csv", manifest["format"], report=False, thresholds=manifest["thresholds"])
    assert (root / "build" / "rehearsal" / "submission.csv").read_bytes() == local.read_bytes()
    assert local.with_name("local_thresholds.json").is_file()


def _oof(cfg):
    parts = [read_oof(fold_paths(cfg.out_dir, k).oof, DIGITS) for k in (0, 1)]
    oof = pd.concat(parts, ignore_index=True)
    return oof, make_task("multilabel", tuple(DIGITS)).targets(oof["label"]), oof_probs(oof, DIGITS)


def test_the_report_scores_each_label_and_ranks_images_by_their_binary_cross_entropy(trained):
    from src.analysis.report import build_report

    r = build_report(trained, n_wrong=4, n_cam=2)
    oof, y, probs = _oof(trained)
    table = r.per_class.set_index("label")
    assert r.counts is None and list(table.index) == DIGITS
    assert list(table["support"]) == list(y.sum(0).astype(int))
    for j, d in enumerate(DIGITS):  # F1 at the threshold fitted on OOF, and AUC, per label, as scikit-learn has them
        assert table.loc[d, "f1"] == pytest.approx(f1_score(y[:, j], probs[:, j] >= table.loc[d, "threshold"],
                                                            zero_division=0))
        assert table.loc[d, "roc_auc"] == pytest.approx(roc_auc_score(y[:, j], probs[:, j]))
    sus = r.suspects.set_index("id").loc[oof["id"]]
    bce = np.mean([[log_loss([t], [p], labels=[0, 1]) for t, p in zip(ty, py)] for ty, py in zip(y, probs)], axis=1)
    assert sus["loss"].to_numpy() == pytest.approx(bce, rel=1e-5)
    assert list(sus["predicted"]) == [" ".join(np.asarray(DIGITS)[p >= 0.5]) for p in probs]
    assert r.suspects["loss"].is_monotonic_decreasing and r.html.is_file()
    assert {"f1_macro", "f1_micro", "roc_auc", "log_loss"} <= set(r.cv.columns)


def test_the_probe_fits_one_classifier_per_label_and_submits_tags(trained, comp, tmp_path):
    from src.analysis.probe import run_probe

    res = run_probe(trained, "logreg", tmp_path / "probe.csv")
    y = make_task("multilabel", tuple(DIGITS)).targets(res.oof["label"])
    probs = res.oof[[f"prob_{d}" for d in DIGITS]].to_numpy()
    assert not np.allclose(probs.sum(1), 1.0)  # one classifier per label, not a softmax
    assert res.scores["oof"]["f1_macro"] == pytest.approx(f1_score(y, probs >= 0.5, average="macro", zero_division=0))
    th = _thresholds(tmp_path / "probe_thresholds.json")
    test_probs = pd.read_csv(tmp_path / "probe_probs.csv", dtype={"id": str})[DIGITS].to_numpy()
    sub = pd.read_csv(tmp_path / "probe.csv", dtype=str, keep_default_na=False)
    assert list(sub["label"]) == [" ".join(d for d, p, t in zip(DIGITS, row, th) if p >= t) for row in test_probs]


def test_multilabel_pseudo_labels_join_training_parts_only(trained, comp, tmp_path):
    from src.data.folds import fold_tables
    from src.ensembling.pseudo_labels import make_pseudo
    from src.training.soft_targets import fold_soft_targets

    name = [str(trained.experiment.name)]
    hard = make_pseudo(trained, name, ["identity"], "equal", None, 0.8, False, 1, tmp_path / "hard.csv")
    table = pd.read_csv(hard, dtype={"id": str, "label": str}, keep_default_na=False)
    probs = table[[f"prob_{d}" for d in DIGITS]].to_numpy()
    assert len(table) and (np.maximum(probs, 1 - probs).min(1) >= 0.8).all()  # every label sure either way
    assert list(table["label"]) == [" ".join(np.asarray(DIGITS)[p >= 0.5]) for p in probs]
    soft = make_pseudo(trained, name, ["identity"], "equal", None, None, True, 1, tmp_path / "soft.csv")
    for path, is_soft in ((hard, False), (soft, True)):
        cfg = trained.model_copy(update={"data": trained.data.model_copy(update={"pseudo": str(path)})})
        train, val, _ = fold_tables(cfg, 0)
        pseudo = train["pseudo"].to_numpy(bool)
        assert pseudo.sum() == len(pd.read_csv(path)) and not set(val["id"]) & set(train.loc[pseudo, "id"])
        targets = fold_soft_targets(cfg, train, DIGITS)
        real = make_task("multilabel", tuple(DIGITS)).targets(train.loc[~pseudo, "label"])
        if is_soft:  # the blend's probabilities per label for pseudo rows, the 0/1 labels for real ones
            assert np.allclose(targets[~pseudo], real)
            assert np.allclose(targets[pseudo], train.loc[pseudo, [f"prob_{d}" for d in DIGITS]].to_numpy(), atol=1e-6)
        else:
            assert targets is None
    assert np.isfinite(train_fold(cfg.model_copy(update={"experiment": cfg.experiment.model_copy(
        update={"name": "ml_soft_pseudo"})}), 0)["f1_macro"])


def test_distillation_mixes_the_teachers_sigmoid_outputs_per_label(trained, tmp_path):
    from src.data.folds import fold_tables
    from src.training.soft_targets import fold_soft_targets

    cfg = load_config(ML_CONFIG, [f"data.dir={trained.data.dir}", f"experiment.output_dir={trained.experiment.output_dir}",
                                  "wandb.mode=disabled", "data.n_folds=2", "experiment.name=ml_student",
                                  f"loss.distill_from={trained.experiment.name}", "loss.distill_weight=0.5",
                                  "loss.distill_temperature=2"])
    train, _, _ = fold_tables(cfg, 0)
    targets = fold_soft_targets(cfg, train, DIGITS)
    oof, _, _ = _oof(trained)
    p = oof.set_index("id").loc[train["id"], [f"prob_{d}" for d in DIGITS]].to_numpy()
    q = np.clip(p, 1e-6, 1 - 1e-6)
    teacher = 1 / (1 + np.exp(-np.log(q / (1 - q)) / 2))
    hard = make_task("multilabel", tuple(DIGITS)).targets(train["label"])
    assert np.allclose(targets, 0.5 * hard + 0.5 * teacher, atol=1e-6)


def test_tags_no_training_image_has_are_refused_in_the_sample_and_the_solution(trained, comp, tmp_path):
    other = tmp_path / comp.name
    shutil.copytree(comp, other, ignore=shutil.ignore_patterns("test", "train"))
    (other / "test").symlink_to(comp / "test")
    (other / "train").symlink_to(comp / "train")
    sample = pd.read_csv(other / "sample_submission.csv", dtype=str)
    sample.assign(label="0 cloudy").to_csv(other / "sample_submission.csv", index=False)
    moved = trained.model_copy(update={"data": trained.data.model_copy(update={"dir": str(other)})})
    with pytest.raises(UserError, match="placeholders hold tags \\['cloudy'\\] that no training image has"):
        _blend(moved, tmp_path / "s.csv", None)
    assert not (tmp_path / "s.csv").exists()
    solution = pd.read_csv(other / "solution.csv", dtype=str, keep_default_na=False)
    solution.loc[0, "label"] = "3 haze"
    solution.to_csv(other / "solution.csv", index=False)
    with pytest.raises(UserError, match="solution holds tags \\['haze'\\]"):
        score_submission(comp / "solution.csv", other / "solution.csv", trained)


def test_a_stacker_per_label_is_scored_nested_and_its_thresholds_fitted_on_its_own_oof(trained, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = pipeline.run(trained, [str(trained.experiment.name)], ["identity"], "equal", "soft", tmp_path / "st.csv",
                       None, stack="logreg")
    printed = capsys.readouterr().out
    member = open_members(trained, [str(trained.experiment.name)])[0]
    table, logodds = member_oof(member, None, Runtime.from_cfg(trained.runtime), trained.loader)
    y, folds = make_task("multilabel", tuple(DIGITS)).targets(table["label"]), table["fold"].to_numpy()
    nested = np.zeros(y.shape)
    for k in (0, 1):
        clf = OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=42)))
        nested[folds == k] = clf.fit(logodds[folds != k], y[folds != k]).predict_proba(logodds[folds == k])
    th = _thresholds(tmp_path / "st_thresholds.json")
    written = float(printed.split("of what is written: ")[1].split()[0])
    assert written == pytest.approx(f1_score(y, nested >= th, average="macro", zero_division=0), abs=5e-5)
    assert "stacker logreg (nested over 2 folds)" in printed and out.is_file()


def test_averaged_checkpoints_are_validated_with_a_sigmoid_per_label(trained):
    from src.training.averaged_experiment import average_experiment

    report = average_experiment(trained, str(trained.experiment.name), top=2)
    averaged = trained.model_copy(update={"experiment": trained.experiment.model_copy(
        update={"name": f"{trained.experiment.name}_top2"})})
    oof, y, probs = _oof(averaged)
    assert "target" not in oof and not np.allclose(probs.sum(1), 1.0)
    assert report["oof"]["f1_macro"] == pytest.approx(f1_score(y, probs >= 0.5, average="macro", zero_division=0))
