"""One class per image given as one-hot 0/1 columns (data.label_cols under data.task=multiclass or
binary: Plant Pathology 2020's `image_id, healthy, multiple_diseases, rust, scab`, scored by the mean
of per-column ROC AUCs): the class is the column holding 1, the class list train.csv's column order,
the submission the sample's probability columns in the sample's order (issue 29, item 7.1).

No mocks: the digits demo's first four digits as four one-hot columns (conftest's
build_one_hot_competition), test_resnet for one short epoch, through the real commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_CONFIG, ONE_HOT_CLASSES, ONE_HOT_OVERRIDES, TINY, build_one_hot_competition
from sklearn.metrics import roc_auc_score

import src.ensemble as ensemble
import src.kaggle_kernel as kaggle_kernel
import src.probe as probe
import src.pseudo as pseudo
import src.report as report
import src.score as score
import src.train as train
from src.core.cli import run_cli
from src.core.config import load_config
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.data.tables import load_train_table
from src.evaluation.metrics import compute_metric

FOLDS = ("data.n_folds=2",)


def _args(comp: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(DEMO_CONFIG), f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled",
            *TINY, *FOLDS, *ONE_HOT_OVERRIDES, *extra]


def _cfg(comp: Path, out: Path, *extra: str):
    return load_config(DEMO_CONFIG, _args(comp, out, *extra)[2:])


@pytest.fixture(scope="module")
def trained(one_hot_competition, tmp_path_factory) -> Path:
    """Both folds of the one-hot world trained (tiny); the outputs folder."""
    out = tmp_path_factory.mktemp("one_hot_out")
    run_cli(train.main, ["--fold", "all", *_args(one_hot_competition, out)])
    return out


def _edit(comp: Path, tmp_path: Path, edit) -> Path:
    """A copy of the one-hot world whose train.csv is `edit`ed."""
    copy = tmp_path / "copy"
    shutil.copytree(comp, copy, symlinks=True)
    table = pd.read_csv(copy / "train.csv", dtype=str)
    edit(table).to_csv(copy / "train.csv", index=False)
    return copy


def test_the_class_is_the_column_holding_one_and_the_class_list_keeps_the_columns_order(one_hot_competition,
                                                                                        tmp_path):
    cfg = _cfg(one_hot_competition, tmp_path / "out")
    table = load_train_table(cfg.data)
    raw = pd.read_csv(one_hot_competition / "train.csv")
    expected = raw[list(ONE_HOT_CLASSES)].to_numpy().argmax(1)
    assert table["label"].tolist() == [ONE_HOT_CLASSES[j] for j in expected]
    df, classes, path = load_or_create_folds(cfg)
    assert classes == list(ONE_HOT_CLASSES) != sorted(ONE_HOT_CLASSES)  # train.csv's order, not sorted
    assert json.loads(path.with_suffix(".json").read_text())["classes"] == list(ONE_HOT_CLASSES)
    by_id = dict(zip(raw["image_id"], expected))
    assert df["target"].tolist() == [by_id[i] for i in df["id"]]


def test_a_row_with_two_ones_is_refused_naming_the_row_and_multilabel(one_hot_competition, tmp_path):
    comp = _edit(one_hot_competition, tmp_path, lambda t: t.assign(rust=["1", "1", *t["rust"][2:]]))
    with pytest.raises(UserError, match=r"^[^\n]*exactly one 1 a row\), and 2 rows are not \(first at row 2, with 2 "
                                        r"ones; 2 with several\); set data.task=multilabel"):
        load_train_table(_cfg(comp, tmp_path / "out").data)


def test_a_row_without_a_one_is_refused_as_having_no_class(one_hot_competition, tmp_path):
    comp = _edit(one_hot_competition, tmp_path, lambda t: t.assign(scab=["0", *t["scab"][1:]]))
    with pytest.raises(UserError, match=r"1 row is not \(first at row 2, with 0 ones; 0 with several\); give each "
                                        r"row its class"):
        load_train_table(_cfg(comp, tmp_path / "out").data)


def test_an_ordinal_task_refuses_label_columns(one_hot_competition, tmp_path):
    with pytest.raises(UserError, match=r"data.label_cols .* names no grades.*set data.label_cols to null"):
        _cfg(one_hot_competition, tmp_path / "out", "data.task=ordinal")


def test_roc_auc_is_the_mean_of_per_column_aucs_even_when_rows_do_not_sum_to_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probs = rng.random((200, 4)) + np.eye(4)[y] * 0.3  # rows summing to anything, as a submission's columns may
    by_hand = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(4)])
    assert compute_metric("roc_auc", y, probs) == pytest.approx(by_hand, abs=1e-12)
    rows = probs / probs.sum(1, keepdims=True)  # and scikit-learn's one-vs-rest macro where rows are probabilities
    assert compute_metric("roc_auc", y, rows) == pytest.approx(roc_auc_score(y, rows, multi_class="ovr"), abs=1e-12)


def test_ensemble_with_tta_writes_the_samples_columns_and_score_is_the_kaggle_metric(one_hot_competition, trained,
                                                                                     tmp_path, capsys):
    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*_args(one_hot_competition, trained), "--tta", "identity", "zoom1.05", "--out", str(out)])
    assert "format proba" in capsys.readouterr().out
    sub, sample = pd.read_csv(out), pd.read_csv(one_hot_competition / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and (sub["image_id"] == sample["image_id"]).all()
    probs = pd.read_csv(out.with_name("sub_probs.csv"))
    assert np.allclose(sub[list(ONE_HOT_CLASSES)].to_numpy(), probs[list(ONE_HOT_CLASSES)].to_numpy())
    assert np.allclose(sub[list(ONE_HOT_CLASSES)].sum(axis=1), 1.0)
    solution = pd.read_csv(one_hot_competition / "solution.csv")
    kaggle = np.mean([roc_auc_score(solution[c], sub[c]) for c in ONE_HOT_CLASSES])  # Plant Pathology's grader
    run_cli(score.main, [str(out), *_args(one_hot_competition, trained)])
    said = capsys.readouterr().out
    assert f"roc_auc {kaggle:.4f}" in said, said


def test_a_sample_in_another_column_order_gets_its_own_order(one_hot_competition, trained, tmp_path):
    comp = tmp_path / "reordered" / "one_hot"  # the same name: the same split file
    shutil.copytree(one_hot_competition, comp, symlinks=True)
    sample = pd.read_csv(comp / "sample_submission.csv")
    order = ["image_id", *sorted(ONE_HOT_CLASSES)]
    sample[order].to_csv(comp / "sample_submission.csv", index=False)
    shutil.copytree(trained / "folds", tmp_path / "out" / "folds")
    shutil.copytree(trained / "demo", tmp_path / "out" / "demo")
    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*_args(comp, tmp_path / "out"), "--tta", "identity", "--out", str(out)])
    sub, probs = pd.read_csv(out), pd.read_csv(out.with_name("sub_probs.csv"))
    assert list(sub.columns) == order
    assert np.allclose(sub[sorted(ONE_HOT_CLASSES)].to_numpy(), probs[sorted(ONE_HOT_CLASSES)].to_numpy())


def test_report_probe_and_pseudo_labels_serve_it(one_hot_competition, trained, tmp_path, capsys):
    args = _args(one_hot_competition, trained)
    run_cli(report.main, args)
    suspects = pd.read_csv(trained / "demo" / "suspect_labels.csv", dtype=str)
    assert set(suspects["label"]) == set(ONE_HOT_CLASSES) and set(suspects["predicted"]) <= set(ONE_HOT_CLASSES)
    run_cli(probe.main, [*args, "--classifier", "logreg", "--out", str(tmp_path / "probe.csv")])
    assert list(pd.read_csv(tmp_path / "probe.csv").columns) == ["image_id", *ONE_HOT_CLASSES]
    table_out = tmp_path / "pl.csv"
    run_cli(pseudo.main, [*args, "--experiments", "demo", "--threshold", "0.2", "--tta", "identity",
                          "--out", str(table_out)])
    said = capsys.readouterr().out
    setting = next(w for w in said.split() if w.startswith("data.pseudo="))
    table = pd.read_csv(setting.removeprefix("data.pseudo="), dtype=str)
    assert len(table) and set(table["label"]) <= set(ONE_HOT_CLASSES)
    run_cli(train.main, [*args, "--fold", "0", "experiment.name=demo_pl", setting])
    assert (trained / "demo_pl" / "fold0" / "done.json").is_file()


def test_binary_from_two_one_hot_columns(demo_dir, tmp_path, capsys):
    comp = build_one_hot_competition(tmp_path, demo_dir, ("no", "yes"))
    args = _args(comp, tmp_path / "out", "data.task=binary")
    run_cli(train.main, ["--fold", "all", *args])
    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*args, "--tta", "identity", "--out", str(out)])
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["image_id", "no", "yes"] and np.allclose(sub["no"] + sub["yes"], 1.0)
    solution = pd.read_csv(comp / "solution.csv")
    run_cli(score.main, [str(out), *args])
    assert f"roc_auc {roc_auc_score(solution['yes'], sub['yes']):.4f}" in capsys.readouterr().out


def test_the_kaggle_bundle_rehearses_the_local_submission(one_hot_competition, trained, tmp_path, capsys):
    root = tmp_path / "kernel"
    shutil.copytree(trained, root / "outputs")
    args = [*_args(one_hot_competition, root / "outputs"), "--out", str(root / "build")]
    run_cli(kaggle_kernel.main, ["build", *args, "--experiments", "demo", "--tta", "identity", "--no-wheels"])
    run_cli(kaggle_kernel.main, ["rehearse", *args])
    assert "submission checked" in capsys.readouterr().out
    sub = pd.read_csv(root / "build" / "rehearsal" / "submission.csv")
    assert list(sub.columns) == ["image_id", *ONE_HOT_CLASSES] and np.allclose(sub[list(ONE_HOT_CLASSES)].sum(axis=1), 1)
