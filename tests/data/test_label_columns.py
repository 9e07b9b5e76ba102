"""Multi-label competitions given as one 0/1 column per label (data.label_cols): a column that is
never positive stays a label, so the split's class list, the model's head and the submission keep
every column of the sample submission; labels positive in fewer images than folds are warned
about with their counts (issue 31, item 6).

No mocks: the multi-label digits demo rewritten as 0/1 columns, test_resnet for one short epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.config import CONFIG_DIR, load_config
from src.core.utils import UserError
from src.data.folds import folds_path, load_or_create_folds
from src.demo import build_multilabel_demo
from src.ensembling.pipeline import run
from src.training.trainer import train_fold

ML_CONFIG = CONFIG_DIR / "demo_multilabel.yaml"
RARE = 2  # images the label 'rare' is positive in: fewer than the 5 folds


@pytest.fixture(scope="module")
def columns_comp(tmp_path_factory) -> Path:
    """The multi-label demo (160 training grids) as id, d0..d9, never (all 0), rare (RARE images),
    with a sample submission of one probability column per label."""
    src = build_multilabel_demo(tmp_path_factory.mktemp("ml") / "digits_multilabel", 160, 40)
    comp = tmp_path_factory.mktemp("cols") / "digits_cols"
    comp.mkdir()
    for name in ("train", "test"):
        (comp / name).symlink_to(src / name)
    tags = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)["label"].str.split()
    table = pd.DataFrame({"id": pd.read_csv(src / "train.csv", dtype=str)["id"],
                          **{f"d{d}": tags.map(lambda t, d=d: int(str(d) in t)) for d in range(10)},
                          "never": 0, "rare": [int(i < RARE) for i in range(len(tags))]})
    table.to_csv(comp / "train.csv", index=False)
    ids = pd.read_csv(src / "sample_submission.csv", dtype=str)["id"]
    pd.DataFrame({"id": ids, **{c: 0.5 for c in table.columns[1:]}}).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _cfg(comp: Path, out: Path, *extra: str):
    return load_config(ML_CONFIG, [f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled",
                                   "data.label_cols=all", *extra])


def test_a_label_never_positive_stays_in_the_class_list_and_rare_ones_are_warned(columns_comp, tmp_path):
    cfg = _cfg(columns_comp, tmp_path / "out")
    with pytest.warns(UserWarning, match=r"2 labels are positive in fewer images than the 5 folds") as caught:
        df, classes, path = load_or_create_folds(cfg)
    message = str(next(w.message for w in caught if "fewer images" in str(w.message)))
    assert "'never' 0" in message and f"'rare' {RARE}" in message and "\n" not in message
    assert "never" in classes and "rare" in classes and len(classes) == 12
    assert json.loads(path.with_suffix(".json").read_text())["classes"] == classes


def test_labels_at_least_as_frequent_as_the_folds_are_not_warned(columns_comp, tmp_path, recwarn):
    load_or_create_folds(_cfg(columns_comp, tmp_path / "out", "data.n_folds=2"))
    said = [str(w.message) for w in recwarn if "fewer images" in str(w.message)]
    assert said == ["1 labels are positive in fewer images than the 2 folds (some folds validate none): 'never' 0; "
                    "they stay labels, learnt as rarely or never present"]


def test_a_tags_column_warns_the_same_way(tmp_path):
    comp = build_multilabel_demo(tmp_path / "digits_multilabel", 160, 40)
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    train.loc[0, "label"] = (train.loc[0, "label"] + " zebra").strip()
    train.to_csv(comp / "train.csv", index=False)
    cfg = load_config(ML_CONFIG, [f"data.dir={comp}", f"experiment.output_dir={tmp_path / 'out'}", "wandb.mode=disabled"])
    with pytest.warns(UserWarning, match=r"1 labels are positive in fewer images than the 5 folds .*'zebra' 1;"):
        load_or_create_folds(cfg)


def test_the_submission_has_every_sample_column_including_the_never_positive_label(columns_comp, tmp_path):
    cfg = _cfg(columns_comp, tmp_path / "out", "model.name=test_resnet", "train.epochs=1", "train.limit_batches=2",
               "loader.num_workers=0", "data.n_folds=2", "data.check_images=false")
    for k in range(2):
        assert "never" in train_fold(cfg, k)["classes"]
    sub = pd.read_csv(run(cfg, out=tmp_path / "sub.csv"))
    sample = pd.read_csv(columns_comp / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    probs = sub.drop(columns="id").to_numpy()
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_a_split_made_without_the_never_positive_label_is_refused(columns_comp, tmp_path):
    cfg = _cfg(columns_comp, tmp_path / "out")
    _, classes, path = load_or_create_folds(cfg)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["classes"] = [c for c in classes if c != "never"]  # as the split was written before this fix
    path.with_suffix(".json").write_text(json.dumps(meta))
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"lacks the data.label_cols labels \['never'\].*delete .*to split again"):
        load_or_create_folds(cfg)
    assert path.read_bytes() == before and folds_path(cfg) == path  # refused, not rewritten
