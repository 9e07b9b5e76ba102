"""A sample submission holding only some of the model's classes or labels (a graded subset): only
those columns are written, in the sample's order, and only those are scored, on OOF and by
src.score, with one line naming the left-out ones; a sample column the model lacks is refused in
one sentence (issue 29, item 7.3).

RANZCR CLiP's grader (mle-bench's grade.py) scores the mean ROC AUC over exactly the 11 columns its
sample submission holds, so no key grades fewer columns than are written.

No mocks: the multi-label digits (160 grids) and the one-hot digits of conftest, test_resnet for one
short epoch, through the real commands; every score against scikit-learn's per-column AUC."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_CONFIG, ONE_HOT_CLASSES, ONE_HOT_OVERRIDES, TINY
from sklearn.metrics import roc_auc_score

import src.ensemble as ensemble
import src.score as score
import src.train as train
from src.core.cli import run_cli
from src.core.config import CONFIG_DIR
from src.core.tasks import make_task
from src.core.utils import UserError

ML_CONFIG = CONFIG_DIR / "demo_multilabel.yaml"
GRADED = ["d7", "d2", "d5"]  # the multi-label sample's columns: three of the ten labels, not in class order


def _ml_world(src: Path, root: Path, cols: list[str]) -> Path:
    """The multi-label digits as one 0/1 column per label (d0..d9), the sample holding `cols` only."""
    comp = root / "ml_cols"
    comp.mkdir(parents=True)
    for name in ("train", "test"):
        (comp / name).symlink_to(src / name)
    for name in ("train.csv", "solution.csv"):
        table = pd.read_csv(src / name, dtype=str, keep_default_na=False)
        tags = table["label"].str.split()
        pd.DataFrame({"id": table["id"], **{f"d{d}": tags.map(lambda t, d=d: int(str(d) in t)) for d in range(10)}}
                     ).to_csv(comp / name, index=False)
    ids = pd.read_csv(src / "sample_submission.csv", dtype=str)["id"]
    pd.DataFrame({"id": ids, **{c: 0.5 for c in cols}}).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _ml_args(comp: Path, out: Path) -> list[str]:
    return ["--config", str(ML_CONFIG), f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled",
            *TINY, "data.n_folds=2", "data.label_cols=all", "metric.name=roc_auc"]


@pytest.fixture(scope="module")
def ml_trained(task_competition, tmp_path_factory) -> tuple[Path, Path]:
    comp = _ml_world(task_competition("multilabel")[0], tmp_path_factory.mktemp("graded"), GRADED)
    out = tmp_path_factory.mktemp("graded_out")
    run_cli(train.main, ["--fold", "all", *_ml_args(comp, out)])
    return comp, out


def test_a_multilabel_subset_is_written_in_the_samples_order_and_scored_on_its_columns(ml_trained, tmp_path,
                                                                                        capsys):
    comp, out = ml_trained
    sub_path = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*_ml_args(comp, out), "--tta", "identity", "--out", str(sub_path)])
    said = capsys.readouterr().out
    assert "note: the sample submission holds 3 of the 10 classes; left out of the file and its score: d0, d1, d3, " \
           "d4, d6, d8, d9" in said
    sub, probs = pd.read_csv(sub_path), pd.read_csv(sub_path.with_name("sub_probs.csv"))
    assert list(sub.columns) == ["id", *GRADED] and np.allclose(sub[GRADED].to_numpy(), probs[GRADED].to_numpy())
    # the OOF score is the blend's over the three columns: the folds' OOF files, by scikit-learn per column
    oof = pd.concat([pd.read_csv(out / "demo_multilabel" / f"fold{k}" / "oof.csv", dtype={"label": str},
                                 keep_default_na=False) for k in (0, 1)])
    by_hand = np.mean([roc_auc_score(oof["label"].str.split().map(lambda t, c=c: c in t), oof[f"prob_{c}"])
                       for c in GRADED])
    line = next(s for s in said.splitlines() if "over the sample's 3 of the 10 labels" in s)
    assert f"{by_hand:.4f}" in line
    solution = pd.read_csv(comp / "solution.csv").set_index("id").loc[sub["id"]]
    kaggle = np.mean([roc_auc_score(solution[c], sub[c]) for c in GRADED])
    run_cli(score.main, [str(sub_path), *_ml_args(comp, out)])
    said = capsys.readouterr().out
    assert f"roc_auc {kaggle:.4f}" in said and "left out of the file and its score: d0" in said


def test_a_one_hot_subset_is_written_and_scored_per_column(one_hot_competition, tmp_path, capsys):
    comp = tmp_path / "sub3" / "one_hot"
    shutil.copytree(one_hot_competition, comp, symlinks=True)
    graded = ["rust", "scab"]
    sample = pd.read_csv(comp / "sample_submission.csv")
    sample[["image_id", *graded]].to_csv(comp / "sample_submission.csv", index=False)
    args = ["--config", str(DEMO_CONFIG), f"data.dir={comp}", f"experiment.output_dir={tmp_path / 'out'}",
            "wandb.mode=disabled", *TINY, "data.n_folds=2", *ONE_HOT_OVERRIDES]
    run_cli(train.main, ["--fold", "all", *args])
    sub_path = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*args, "--tta", "identity", "--out", str(sub_path)])
    assert "holds 2 of the 4 classes; left out of the file and its score: healthy, multiple_diseases" in \
        capsys.readouterr().out
    sub = pd.read_csv(sub_path)
    assert list(sub.columns) == ["image_id", *graded]
    solution = pd.read_csv(comp / "solution.csv").set_index("image_id").loc[sub["image_id"]]
    run_cli(score.main, [str(sub_path), *args])
    kaggle = np.mean([roc_auc_score(solution[c], sub[c]) for c in graded])
    assert f"roc_auc {kaggle:.4f}" in capsys.readouterr().out
    assert sorted(ONE_HOT_CLASSES) == ["healthy", "multiple_diseases", "rust", "scab"]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_a_sample_column_the_model_lacks_is_one_sentence(task):
    sample = pd.DataFrame({"id": ["x"], "a": [0.5], "b": [0.5], "zebra": [0.5]})
    with pytest.raises(UserError, match=r"^the sample submission's columns \['zebra'\] are not (classes|labels) of "
                                        r"the split .*no model of it predicts them; check data.label_cols"):
        make_task(task, ("a", "b", "c")).resolve_format("auto", sample, "id", "roc_auc")


@pytest.mark.parametrize("task", ["ordinal", "regression"])
def test_one_value_tasks_refuse_several_columns(task):
    sample = pd.DataFrame({"id": ["x"], "0": [0.5], "1": [0.5]})
    classes = ("0", "1", "2") if task == "ordinal" else ("y",)
    with pytest.raises(UserError, match=r"one (grade )?column|cannot tell the submission format"):
        make_task(task, classes).resolve_format("auto", sample, "id", "rmse" if task == "regression" else "qwk")
