"""Several images per answer (data.answer_id): answer ids from columns or a template, one label per
answer, answers inside groups, folds that never split a group, the test images in the sample's order,
and each task's aggregate."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import GROUPED_KINDS

from src.core.tasks import grade_probs, make_task
from src.core.utils import UserError
from src.data.answers import AnswerIndex, to_answers
from src.data.folds import load_or_create_folds
from src.data.tables import load_test_table, load_train_table


def _cfg(demo_cfg, comp, out, config, extra, *more):
    return demo_cfg(comp, out, "data.n_folds=2", *extra, *more, config=config)


@pytest.mark.parametrize("kind", GROUPED_KINDS)
def test_folds_never_split_a_patient_or_an_answer(kind, grouped_competition, demo_cfg, tmp_path):
    comp, config, extra = grouped_competition(kind)
    df, _, _ = load_or_create_folds(_cfg(demo_cfg, comp, tmp_path, config, extra))
    raw = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    assert df["answer"].tolist() == (raw["patient_id"] + "_" + raw["laterality"]).tolist()
    assert (df.groupby("group")["fold"].nunique() == 1).all()  # every patient in one fold
    assert (df.groupby("answer")["fold"].nunique() == 1).all()
    assert df["answer"].nunique() < len(df) and set(df["fold"]) == {0, 1}


def test_without_group_col_the_answers_are_the_groups(grouped_competition, demo_cfg, tmp_path):
    comp, config, extra = grouped_competition("multiclass")
    cfg = _cfg(demo_cfg, comp, tmp_path, config, extra, "data.group_col=null")
    df, _, path = load_or_create_folds(cfg)
    assert (df.groupby("answer")["fold"].nunique() == 1).all()
    assert "_a" in path.stem  # a split of its own: another answer_id would group otherwise


def test_a_column_names_the_answer(grouped_competition, demo_cfg, tmp_path):
    comp, config, extra = _world(grouped_competition, tmp_path)
    for name in ("train.csv", "test.csv"):
        t = pd.read_csv(comp / name, dtype=str)
        t.assign(breast=t["patient_id"] + "_" + t["laterality"]).to_csv(comp / name, index=False)
    cfg = _cfg(demo_cfg, comp, tmp_path, config, extra, "data.answer_id=breast")
    df = load_train_table(cfg.data)
    assert df["answer"].tolist() == pd.read_csv(comp / "train.csv", dtype=str)["breast"].tolist()
    test, sample = load_test_table(cfg.data)
    assert list(pd.unique(test["answer"])) == sample["prediction_id"].tolist()


def test_the_test_images_follow_the_sample_order(grouped_competition, demo_cfg, tmp_path):
    comp, config, extra = grouped_competition("binary")
    test, sample = load_test_table(_cfg(demo_cfg, comp, tmp_path, config, extra).data)
    listed = pd.read_csv(comp / "test.csv", dtype=str)
    assert sorted(test["id"]) == sorted(listed["id"])  # every image, once
    assert list(pd.unique(test["answer"])) == sample["prediction_id"].tolist()
    assert all(p.endswith(f"{i}.png") for i, p in zip(test["id"], test["path"]))


def _world(grouped_competition, tmp_path):
    comp, config, extra = grouped_competition("multiclass")
    copy = shutil.copytree(comp, tmp_path / "grouped", symlinks=True)
    return copy, config, extra


def test_an_answer_with_two_labels_is_refused(grouped_competition, demo_cfg, tmp_path):
    comp, config, extra = _world(grouped_competition, tmp_path)
    t = pd.read_csv(comp / "train.csv", dtype=str)
    first = t.groupby(t["patient_id"] + t["laterality"]).filter(lambda g: len(g) > 1).index[0]
    t.loc[first, "label"] = "9" if t.loc[first, "label"] != "9" else "8"
    t.to_csv(comp / "train.csv", index=False)
    with pytest.raises(UserError, match="different labels"):
        load_train_table(_cfg(demo_cfg, comp, tmp_path, config, extra).data)


def test_images_not_asked_for_are_left_out_with_a_warning(grouped_competition, demo_cfg, tmp_path):
    comp, config, extra = _world(grouped_competition, tmp_path)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    sample.iloc[1:].to_csv(comp / "sample_submission.csv", index=False)
    with pytest.warns(UserWarning, match="answer none of the sample"):
        test, _ = load_test_table(_cfg(demo_cfg, comp, tmp_path, config, extra).data)
    assert sample["prediction_id"][0] not in set(test["answer"])


def _reference(probs: np.ndarray, answers: list[str], how: str) -> pd.DataFrame:
    """The answers' rows by pandas, in first-seen order: the reference the tasks' aggregate must match."""
    frame = pd.DataFrame(probs).assign(a=answers)
    return getattr(frame.groupby("a", sort=False), how)()


@pytest.mark.parametrize("how", ["mean", "max"])
def test_each_task_aggregates_to_valid_rows(how):
    rng = np.random.default_rng(0)
    answers = ["b", "a", "b", "c", "a", "a", "d"]
    index = AnswerIndex.of(answers, how)
    assert index.ids.tolist() == ["b", "a", "c", "d"]
    p3 = rng.dirichlet(np.ones(3), len(answers))
    p2 = rng.dirichlet(np.ones(2), len(answers))
    tags = rng.random((len(answers), 3))
    values = rng.uniform(1, 100, (len(answers), 1))
    binary = index.probs(make_task("binary", ["0", "1"]), p2)
    assert np.allclose(binary[:, 1], _reference(p2[:, 1], answers, how)[0]) and np.allclose(binary.sum(1), 1)
    assert np.allclose(index.probs(make_task("multilabel", ["x", "y", "z"]), tags), _reference(tags, answers, how))
    assert np.allclose(index.probs(make_task("regression", ["v"]), values), _reference(values, answers, how))
    ordinal = make_task("ordinal", ["0", "1", "2"])
    scores = _reference(p3 @ np.arange(3), answers, how)[0].to_numpy()
    assert np.allclose(index.probs(ordinal, p3), grade_probs(scores, 3))
    multiclass = make_task("multiclass", ["0", "1", "2"])
    if how == "mean":
        assert np.allclose(index.probs(multiclass, p3), _reference(p3, answers, how))
    else:
        assert "use data.aggregate=mean" in type(multiclass).check_aggregate(how)
    for kind, p in (("binary", binary), ("ordinal", index.probs(ordinal, p3))):
        assert not make_task(kind, ["0", "1"] if kind == "binary" else ["0", "1", "2"]).invalid_rows(p).any()


def test_to_answers_keeps_the_first_images_columns():
    table = pd.DataFrame({"id": ["i1", "i2", "i3"], "label": ["1", "1", "0"], "fold": [0, 0, 1],
                          "answer": ["A", "A", "B"]})
    rows, probs = to_answers(table, np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]]), make_task("binary", ["0", "1"]),
                             "max")
    assert rows.to_dict("list") == {"id": ["A", "B"], "label": ["1", "0"], "fold": [0, 1]}
    assert np.allclose(probs, [[0.2, 0.8], [0.9, 0.1]])

