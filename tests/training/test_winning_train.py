"""Winning techniques on the training side: leak-safe pseudo-labels and distillation from OOF.

A tiny teacher experiment `t` is trained for real on 2 folds of the session's digits demo; its
blended test predictions make the pseudo-labels and its OOF predictions the soft targets.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import src.pseudo as pseudo_cli
from src.core.runtime import Runtime
from src.core.utils import UserError, softmax
from src.data.folds import fold_tables
from src.data.pseudo_rows import pseudo_digest
from src.data.tables import prob_columns
from src.ensembling.pseudo_labels import make_pseudo
from src.runs.layout import fold_paths, read_oof
from src.runs.members import member_oof_views, open_member
from src.training.soft_targets import fold_soft_targets
from src.training.trainer import train_fold

TRAIN = ("data.n_folds=2", "model.name=test_resnet", "train.epochs=1", "train.limit_batches=20",
         "sched.warmup_epochs=0", "optim.lr=0.01", "loader.batch_size=32", "loader.num_workers=0",
         "data.check_images=false", "runtime.device=cpu")
SHORT = ("train.limit_batches=2",)  # students: two steps are enough to show the targets are used


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_dir, demo_cfg) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("wintrain")
    out = root / "out"
    cfg = demo_cfg(demo_dir, out, "experiment.name=t", *TRAIN)
    for k in range(2):
        train_fold(cfg, k)
    hard = make_pseudo(cfg, ["t"], ["identity"], "equal", "soft", 0.5, False, 1, root / "pl" / "hard.csv")
    soft = make_pseudo(cfg, ["t"], ["identity"], "equal", "soft", None, True, 2, root / "pl" / "soft.csv")
    return SimpleNamespace(root=root, demo=demo_dir, out=out, cfg=cfg, hard=hard, soft=soft,
                           make=lambda *extra: demo_cfg(demo_dir, out, *TRAIN, *extra))


# ---------------------------------------------------------------- pseudo-labels


def test_pseudo_table_is_the_confident_part_of_the_blend(world):
    table = pd.read_csv(world.hard, dtype={"id": str, "label": str})
    probs = table[prob_columns([str(i) for i in range(10)])].to_numpy()
    np.testing.assert_allclose(probs.max(1), table["confidence"], rtol=1e-6)
    assert (table["confidence"] >= 0.5).all() and (table["label"] == probs.argmax(1).astype(str)).all()
    soft = pd.read_csv(world.soft, dtype={"id": str})
    assert len(soft) == 360 and (soft["round"] == 2).all()  # soft keeps every test image by default
    assert 0 < len(table) < len(soft)
    # the soft table's rows are the same blend: the hard table is its confident subset
    merged = table.merge(soft, on="id", suffixes=("", "_s"))
    np.testing.assert_allclose(merged["confidence"], merged["confidence_s"], rtol=1e-9)


@pytest.mark.parametrize("table", ["hard", "soft"])
def test_pseudo_labels_never_reach_a_validation_fold(world, table):
    path = getattr(world, table)
    pseudo = pd.read_csv(path, dtype={"id": str})
    for k in range(2):
        train, val, classes = fold_tables(world.make("experiment.name=plain"), k)
        train_p, val_p, classes_p = fold_tables(world.make("experiment.name=pl", f"data.pseudo={path}"), k)
        pd.testing.assert_frame_equal(val_p, val)  # the validation rows: identical, row for row
        assert classes_p == classes
        real = train_p[~train_p["pseudo"]].drop(columns=["pseudo", "pseudo_soft", *prob_columns(classes)])
        pd.testing.assert_frame_equal(real.reset_index(drop=True), train)
        added = train_p[train_p["pseudo"]]
        assert added["id"].tolist() == pseudo["id"].tolist() and (added["fold"] == -1).all()
        assert all("/test/" in p for p in added["path"]) and not set(added["path"]) & set(val["path"])


def test_training_with_pseudo_labels_scores_oof_on_real_labels_only(world, capsys):
    cfg = world.make("experiment.name=pl_soft", f"data.pseudo={world.soft}", *SHORT)
    train_fold(cfg, 0)
    real, val, classes = fold_tables(world.make("experiment.name=plain"), 0)
    n = len(real)
    assert f"fold 0: {n + 360} train / {len(val)} valid images" in capsys.readouterr().out  # + 360 pseudo
    oof = read_oof(fold_paths(cfg.out_dir, 0).oof, classes)
    assert oof["id"].tolist() == val["id"].tolist() and oof["label"].tolist() == val["label"].tolist()
    targets = fold_soft_targets(cfg, fold_tables(cfg, 0)[0], classes)
    pseudo = pd.read_csv(world.soft, dtype={"id": str})
    np.testing.assert_allclose(targets[n:], pseudo[prob_columns(classes)].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(targets[:n].argmax(1), real["target"])
    assert set(np.unique(targets[:n])) == {0.0, 1.0}


def test_a_pseudo_table_of_another_competition_is_refused(world, tmp_path):
    table = pd.read_csv(world.hard, dtype={"id": str})
    text = table.assign(id="nope_" + table["id"]).to_csv(index=False)
    meta = world.hard.with_suffix(".json").read_bytes()
    bad = tmp_path / f"bad_{pseudo_digest(text.encode(), meta)}.csv"  # named as src.pseudo names tables
    bad.write_text(text)
    bad.with_suffix(".json").write_bytes(meta)
    with pytest.raises(UserError, match="not test images"):
        fold_tables(world.make(f"data.pseudo={bad}"), 0)


def test_a_pseudo_table_is_named_by_its_content_and_an_edit_is_refused(world, tmp_path):
    """Two different tables never share a data.pseudo value (so mixed folds and resumes across them
    are refused by the usual config checks), and a table edited after src.pseudo wrote it stops."""
    assert world.hard.name.startswith("hard_") and world.soft.name.startswith("soft_")
    meta = world.hard.with_suffix(".json").read_bytes()
    assert world.hard.stem.rsplit("_", 1)[1] == pseudo_digest(world.hard.read_bytes(), meta)
    edited = tmp_path / world.hard.name
    edited.write_text(world.hard.read_text().replace(",1.0,", ",0.99,", 1) + "\n")
    edited.with_suffix(".json").write_bytes(meta)
    with pytest.raises(UserError, match="was edited"):
        fold_tables(world.make(f"data.pseudo={edited}"), 0)


def test_hard_and_soft_tables_of_the_same_rows_get_two_names_and_an_edited_json_is_refused(world, tmp_path):
    """At one threshold a hard and a --soft table hold the same CSV bytes; only the .json says which
    targets they train. Both files are in the name, so neither overwrites the other, and turning a
    hard table soft by editing its .json stops training."""
    cfg = world.cfg
    hard = make_pseudo(cfg, ["t"], ["identity"], "equal", "soft", 0.0, False, 1, tmp_path / "same.csv")
    soft = make_pseudo(cfg, ["t"], ["identity"], "equal", "soft", 0.0, True, 1, tmp_path / "same.csv")
    assert hard.read_bytes() == soft.read_bytes() and hard != soft
    assert json.loads(hard.with_suffix(".json").read_text())["soft"] is False
    assert json.loads(soft.with_suffix(".json").read_text())["soft"] is True
    for path, is_soft in ((hard, False), (soft, True)):  # each trains what it says
        train, _, classes = fold_tables(world.make(f"data.pseudo={path}"), 0)
        assert bool(train.loc[train["pseudo"], "pseudo_soft"].all()) is is_soft
    meta = json.loads(hard.with_suffix(".json").read_text())
    hard.with_suffix(".json").write_text(json.dumps({**meta, "soft": True}, indent=2))
    with pytest.raises(UserError, match="edited"):
        fold_tables(world.make(f"data.pseudo={hard}"), 0)


# ---------------------------------------------------------------- distillation


def test_distillation_targets_come_from_the_fold_model_that_did_not_train_on_the_image(world):
    cfg = world.make("experiment.name=student", "loss.distill_from=t", "loss.distill_weight=0.7",
                     "loss.distill_temperature=2")
    teacher = open_member("t", str(world.out), "error", str(world.demo))
    table, logits = member_oof_views(teacher, ["identity"], Runtime.from_cfg(cfg.runtime), cfg.loader)
    # each teacher fold model's own predictions for every training image, recomputed here
    own = {k: pd.DataFrame(softmax(logits[k][0]), index=table[table["fold"] == k]["id"]) for k in (0, 1)}
    for k in range(2):
        train, _, classes = fold_tables(cfg, k)
        targets = fold_soft_targets(cfg, train, classes)
        for j in sorted(set(train["fold"])):
            rows = train["fold"] == j
            teacher_train_ids = set(fold_tables(world.cfg, j)[0]["id"])
            assert not teacher_train_ids & set(train.loc[rows, "id"])  # model j never trained on these
            p = own[j].loc[train.loc[rows, "id"]].to_numpy()
            soft = softmax(np.log(p) / 2.0)
            expected = 0.3 * np.eye(10)[train.loc[rows, "target"]] + 0.7 * soft
            np.testing.assert_allclose(targets[rows.to_numpy()], expected, atol=1e-4)
            other = own[1 - j].reindex(train.loc[rows, "id"])
            assert other.isna().all().all()  # the other fold model has no OOF for them: it trained on them


def test_distillation_trains_and_refuses_a_teacher_on_other_folds(world, capsys):
    cfg = world.make("experiment.name=student2", "loss.distill_from=t", *SHORT)
    result = train_fold(cfg, 0)
    assert np.isfinite(result["best"])
    other = world.make("experiment.name=student3", "loss.distill_from=t", "data.fold_seed=3", *SHORT)
    with pytest.raises(UserError, match="same split"):
        train_fold(other, 0)
    assert not (other.out_dir / "fold0").exists()
    with pytest.raises(UserError, match="mixup"):
        train_fold(world.make("experiment.name=student4", "loss.distill_from=t", "train.mixup=0.2"), 0)


def test_pseudo_cli_writes_the_table_and_refuses_a_bad_threshold(world, overrides_for, capsys):
    out = world.root / "pl" / "cli.csv"
    args = ["--config", "configs/demo.yaml", "--experiments", "t", "--tta", "identity", "--threshold", "0.6",
            "--round", "3", "--out", str(out), *overrides_for(world.demo, world.out, *TRAIN)]
    pseudo_cli.main(args)
    (written,) = out.parent.glob("cli_*.csv")  # the name gains the content's sha8
    table = pd.read_csv(written, dtype={"id": str})
    assert (table["round"] == 3).all() and (table["confidence"] >= 0.6).all()
    assert f"train with data.pseudo={written}" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a probability"):
        pseudo_cli.main([*args[:-len(overrides_for(world.demo, world.out, *TRAIN))], "--threshold", "1.5",
                         *overrides_for(world.demo, world.out, *TRAIN)])
