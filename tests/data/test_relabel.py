"""Reviewed labels flow back into training: src.folds --relabel on a reviewed suspect list, the
content-addressed file and its own split, the label in training and in oof.csv, and the runs it
must not be mixed with."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import DEMO_CONFIG, TINY

import src.folds as folds_cmd
from src.core.config import load_config
from src.core.utils import UserError
from src.data.folds import fold_tables, folds_path, load_or_create_folds
from src.training.trainer import train_fold

FOLDS = ("data.n_folds=2",)


def _args(data_dir, out) -> list[str]:
    return ["--config", str(DEMO_CONFIG), f"data.dir={data_dir}", f"experiment.output_dir={out}", "wandb.mode=disabled",
            *TINY, *FOLDS]


def _reviewed(base: pd.DataFrame, path: Path, n_per_fold: int = 2) -> dict[str, str]:
    """A suspect list with reviewed_label filled for a few images of each fold (the next digit)."""
    picks = pd.concat([base[base["fold"] == k].head(n_per_fold) for k in (0, 1)])
    new = {i: str((int(lab) + 1) % 10) for i, lab in zip(picks["id"], picks["label"])}
    sus = base[["id", "fold", "label"]].assign(predicted="0", prob=0.5, reviewed_label="")
    sus.loc[sus["id"].isin(new), "reviewed_label"] = sus["id"].map(new)
    sus.to_csv(path, index=False)
    return new


def test_reviewed_labels_reach_training(demo_dir, tmp_path, capsys):
    args = _args(demo_dir, tmp_path / "out")
    cfg = load_config(args[1], args[2:])
    base, classes, base_path = load_or_create_folds(cfg)
    new = _reviewed(base, tmp_path / "suspect_labels.csv")
    folds_cmd.main(args + ["--relabel", str(tmp_path / "suspect_labels.csv")])
    setting = capsys.readouterr().out.split("data.relabel=")[-1].split()[0]
    relabelled = load_config(args[1], args[2:] + [f"data.relabel={setting}", "experiment.name=demo_relabel"])
    # The file is named by its content; the split is a file of its own with the base split's folds.
    written = pd.read_csv(setting, dtype=str)
    assert dict(zip(written["id"], written["label"])) == new
    split = folds_path(relabelled)
    assert split != base_path and split.name.startswith(base_path.stem + "_r")
    meta = json.loads(split.with_suffix(".json").read_text())
    assert meta["classes"] == classes and meta["relabelled"] == len(new) and meta["base_split"] == str(base_path)
    df, _, _ = load_or_create_folds(relabelled, create=False)
    assert df["fold"].tolist() == base["fold"].tolist()
    changed = df["label"] != base["label"]
    assert dict(zip(df["id"][changed], df["label"][changed])) == new
    # Training fold 0 sees the fold-1 images with their reviewed labels, and validates on the rest.
    train_df, val_df, _ = fold_tables(relabelled, 0)
    for frame in (train_df, val_df):
        mine = frame[frame["id"].isin(new)]
        assert len(mine) == len(new) // 2
        assert (mine["label"] == mine["id"].map(new)).all()
        assert (mine["target"] == mine["label"].map(classes.index)).all()
    train_fold(relabelled, 0)
    oof = pd.read_csv(relabelled.out_dir / "fold0" / "oof.csv", dtype={"id": str, "label": str}).set_index("id")
    for i in val_df["id"][val_df["id"].isin(new)]:
        assert oof.loc[i, "label"] == new[i]
    assert json.loads((relabelled.out_dir / "fold0" / "done.json").read_text())["config"]["data"]["relabel"] == setting
    # A fold of the same experiment on train.csv's labels is not blended with it.
    with pytest.raises(UserError, match="data.relabel"):
        train_fold(load_config(args[1], args[2:] + ["experiment.name=demo_relabel"]), 1)
    # And a relabel file edited after it was written is refused, not trained on.
    Path(setting).write_text(Path(setting).read_text().replace(",", ",1", 1))
    with pytest.raises(UserError, match="does not hold the labels its name records"):
        fold_tables(relabelled, 1)


@pytest.mark.parametrize("rows,match", [
    ([("no_such_id", "3")], "not in the training table"),
    ([("digit_0000", "eleven")], "not classes of the split"),
    ([("digit_0000", "3"), ("digit_0000", "4")], "twice"),
])
def test_bad_reviews_write_nothing(demo_dir, tmp_path, rows, match):
    args = _args(demo_dir, tmp_path / "out")
    load_or_create_folds(load_config(args[1], args[2:]))
    pd.DataFrame(rows, columns=["id", "reviewed_label"]).to_csv(tmp_path / "rev.csv", index=False)
    with pytest.raises(UserError, match=match):
        folds_cmd.main(args + ["--relabel", str(tmp_path / "rev.csv")])
    assert not (tmp_path / "out" / "folds" / "relabel").exists()
    assert len(list((tmp_path / "out" / "folds").glob("*_r*.csv"))) == 0
