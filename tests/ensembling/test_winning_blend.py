"""Winning techniques on the blend side: the submission ledger, rank voting, the nested-fold
stacker and TTA views chosen on OOF.

Two tiny members (a and b) are trained for real on 2 folds of the session's digits demo;
submissions and ledgers go to tmp folders, never the repo's submissions/.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import train_two_members
from scipy.stats import rankdata

import src.ledger as ledger_cli
from src.core.runtime import Runtime
from src.core.utils import UserError, softmax
from src.core.views import parse_views
from src.data.tables import load_test_table
from src.ensembling import pipeline
from src.ensembling.ledger import COLUMNS, correlation, read_ledger
from src.ensembling.oof import aligned_oof
from src.evaluation.blending import combine
from src.evaluation.metrics import compute_metric
from src.evaluation.stacking import make_stacker, nested_oof, stack_features
from src.runs.members import member_test, open_members

TRAIN = ("data.n_folds=2", "model.name=test_resnet", "train.epochs=1", "train.limit_batches=20",
         "sched.warmup_epochs=0", "optim.lr=0.01", "loader.batch_size=32", "loader.num_workers=0",
         "data.check_images=false", "runtime.device=cpu")
ENSEMBLE = ("experiment.name=a", "data.n_folds=2", "runtime.device=cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_dir, demo_cfg) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("win")
    out = root / "out"
    train_two_members(out, demo_dir, demo_cfg, TRAIN)
    return SimpleNamespace(root=root, demo=demo_dir, out=out,
                           cfg=demo_cfg(demo_dir, out, *ENSEMBLE))


# ---------------------------------------------------------------- the ledger


def test_ledger_gains_one_row_per_submission_and_records_lb(world, capsys):
    sub_dir = world.root / "ledger_subs"
    ledger = sub_dir / "ledger.csv"
    first = pipeline.run(world.cfg, ["a"], ["identity"], "equal", "soft", sub_dir / "one.csv", None)
    df = read_ledger(ledger)
    assert len(df) == 1 and list(df.columns) == COLUMNS
    row = df.iloc[0]
    assert row["file"] == str(first) and row["members"] == "a" and row["views"] == "identity"
    assert row["configs"].startswith("a:") and row["commit"] and row["lb"] == ""
    # the CV recorded is the OOF score the report printed for that blend
    out = capsys.readouterr().out
    printed = [ln.split() for ln in out.splitlines() if ln.split()[:2] == ["a", "none"]]
    assert printed and float(row["cv"]) == pytest.approx(float(printed[0][2]), abs=1e-4)

    second = pipeline.run(world.cfg, ["a", "b"], ["identity", "zoom1.05"], "equal", "soft", sub_dir / "two.csv", None)
    before = second.read_bytes()
    df = read_ledger(ledger)
    assert len(df) == 2 and df["sha1"].iloc[1] == hashlib.sha1(before).hexdigest()
    # the same blend again writes the same bytes: allowed, and a row of its own
    pipeline.run(world.cfg, ["a", "b"], ["identity", "zoom1.05"], "equal", "soft", sub_dir / "two.csv", None)
    assert second.read_bytes() == before and len(read_ledger(ledger)) == 3
    _recorded_as_other_content(ledger, "two.csv")
    with pytest.raises(UserError, match="--out .*two.csv is a submission the ledger recorded"):  # never written over
        pipeline.run(world.cfg, ["a", "b"], ["identity", "zoom1.05"], "equal", "soft", sub_dir / "two.csv", None)
    assert second.read_bytes() == before and len(read_ledger(ledger)) == 3
    assert df["members"].tolist() == ["a", "a+b"] and df["views"].iloc[1] == "identity+zoom1.05"
    assert df["configs"].iloc[1].count(";") == 1

    _recorded_as(ledger, "two.csv", hashlib.sha1(before).hexdigest())  # back to what it holds
    ledger_cli.run(ledger, (str(second), 0.5))
    df = read_ledger(ledger)
    assert df["lb"].tolist() == ["", "", "0.5"]  # the latest row of that file
    with pytest.raises(UserError, match="not in the ledger"):
        ledger_cli.run(ledger, (str(sub_dir / "nope.csv"), 0.5))
    assert "correlation is shown from 3" in capsys.readouterr().out
    second.write_text(second.read_text().replace(",", ";", 1))  # edited after it was recorded
    with pytest.raises(UserError, match="no longer holds what its ledger row recorded"):
        ledger_cli.run(ledger, (str(second), 0.6))
    assert read_ledger(ledger)["lb"].tolist() == ["", "", "0.5"]


def _recorded_as(ledger, name: str, sha1: str) -> None:
    df = read_ledger(ledger)
    df.loc[df["file"].str.endswith(name), "sha1"] = sha1
    df.to_csv(ledger, index=False)


def _recorded_as_other_content(ledger, name: str) -> None:
    """The ledger's rows of `name` describe other bytes than the next blend writes (as when the
    file was scored from an earlier model): what the overwrite checks must protect."""
    _recorded_as(ledger, name, "0" * 40)


def test_a_default_name_the_ledger_recorded_moves_on_to_a_new_one(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default names are under ./submissions/
    first = pipeline.run(world.cfg, ["a"], ["identity"], "equal", "soft", None, None)
    ledger_cli.run(first.parent / "ledger.csv", (str(first), 0.9))
    assert pipeline.run(world.cfg, ["a"], ["identity"], "equal", "soft", None, None) == first  # same bytes: fine
    _recorded_as_other_content(first.parent / "ledger.csv", "a.csv")
    scored = first.read_bytes()
    capsys.readouterr()
    again = pipeline.run(world.cfg, ["a"], ["identity"], "equal", "soft", None, None)
    assert again.name == "a_v2.csv" and first.read_bytes() == scored
    assert f"{first} is a submission the ledger recorded" in capsys.readouterr().out


def test_ledger_correlation_needs_three_scored_rows():
    df = pd.DataFrame({"cv": ["0.9", "0.8", "0.7", "0.6"], "lb": ["0.91", "0.82", "", "0.55"],
                       "metric": ["accuracy"] * 4})
    corr = correlation(df)
    assert corr["n"] == 3 and corr["pearson"] == pytest.approx(np.corrcoef([0.9, 0.8, 0.6], [0.91, 0.82, 0.55])[0, 1])
    assert correlation(df.iloc[:2]) is None
    assert correlation(df.assign(metric=["accuracy", "log_loss", "accuracy", "accuracy"])) is None


def test_ledger_cli_rejects_a_bad_score(tmp_path):
    with pytest.raises(UserError, match="not a number"):
        ledger_cli.main(["--ledger", str(tmp_path / "l.csv"), "--lb", "x.csv", "abc"])
    assert not Path(tmp_path / "l.csv").exists()


# ---------------------------------------------------------------- rank voting


def test_rank_voting_is_the_rank_average():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50, 2))
    w = np.array([2.0, 1.0, 1.0])
    out = combine(logits, "rank", w)
    p1 = softmax(logits)[..., 1]  # (K, N)
    expected = (w[:, None] * (rankdata(p1, axis=1) - 1) / 49).sum(0) / w.sum()
    np.testing.assert_allclose(out[:, 1], expected, atol=1e-8)  # two classes: exactly the rank average
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    multi = combine(rng.normal(size=(2, 30, 4)), "rank")
    assert np.isfinite(multi).all() and np.allclose(multi.sum(1), 1.0)


def test_rank_voting_through_the_ensemble(world, capsys):
    out = pipeline.run(world.cfg, ["a", "b"], ["identity"], "equal", "rank", world.root / "rank" / "r.csv", None)
    probs = pd.read_csv(out.with_name("r_probs.csv"), dtype={"id": str}).drop(columns="id").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert read_ledger(out.parent / "ledger.csv")["voting"].tolist() == ["rank"]
    # members' folds are averaged (as their OOF rows, one prediction each, are), then members rank-averaged
    rt = Runtime.from_cfg(world.cfg.runtime)
    test, _ = load_test_table(world.cfg.data)
    soft = [member_test(m, test, ["identity"], rt, world.cfg.loader, "soft")
            for m in open_members(world.cfg, ["a", "b"])]
    expected = combine(np.stack([np.log(np.clip(p, 1e-12, 1)) for p in soft]), "rank")
    np.testing.assert_allclose(probs, expected, atol=1e-6)


# ---------------------------------------------------------------- the stacker


def test_stacker_oof_comes_from_nested_folds():
    rng = np.random.default_rng(1)
    n, c = 120, 3
    y = rng.integers(0, c, n)
    folds = np.arange(n) % 3
    x = rng.normal(size=(n, 2 * c)) + np.eye(c)[y].repeat(2, axis=1)
    oof = nested_oof("logreg", x, y, folds, c)
    for k in range(3):  # each fold's rows: a stacker that never saw them, fitted independently here
        held = folds == k
        ref = make_stacker("logreg").fit(x[~held], y[~held]).predict_proba(x[held])
        np.testing.assert_allclose(oof[held], ref, atol=1e-8)
    # relabelling fold 0 leaves its own OOF predictions unchanged (they never saw those labels) ...
    y2 = y.copy()
    y2[folds == 0] = rng.integers(0, c, (folds == 0).sum())
    oof2 = nested_oof("logreg", x, y2, folds, c)
    np.testing.assert_allclose(oof2[folds == 0], oof[folds == 0], atol=1e-10)
    assert not np.allclose(oof2[folds == 1], oof[folds == 1])  # ... but changes the other folds'


def test_stack_through_the_ensemble_reports_the_nested_score(world, capsys):
    out = pipeline.run(world.cfg, ["a", "b"], ["identity"], "equal", "soft", world.root / "stack" / "s.csv", None,
                  stack="logreg")
    text = capsys.readouterr().out
    # recompute the nested score from the members' OOF predictions
    members = open_members(world.cfg, ["a", "b"])
    per, base = aligned_oof(members, ["identity"], Runtime.from_cfg(world.cfg.runtime), world.cfg.loader, "soft")
    y = base["label"].map({c: i for i, c in enumerate(members[0].classes)}).to_numpy()
    nested = nested_oof("logreg", stack_features(per), y, base["fold"].to_numpy(), 10)
    expected = compute_metric("accuracy", y, nested)
    assert f"stacker logreg (nested over 2 folds): OOF accuracy {expected:.4f}" in text
    row = read_ledger(out.parent / "ledger.csv").iloc[-1]
    assert row["stack"] == "logreg" and float(row["cv"]) == pytest.approx(expected) and row["weights"] == ""
    probs = pd.read_csv(out.with_name("s_probs.csv"), dtype={"id": str}).drop(columns="id").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


# ---------------------------------------------------------------- TTA chosen on OOF


def _oof_scorer(cfg):
    """views -> the OOF accuracy of members a and b blended softly with those views, computed
    independently of the code under test's selection."""
    members = open_members(cfg, ["a", "b"])
    rt = Runtime.from_cfg(cfg.runtime)

    def score(views):
        per, base = aligned_oof(members, views, rt, cfg.loader, "soft")
        y = base["label"].map({c: i for i, c in enumerate(members[0].classes)}).to_numpy()
        return compute_metric("accuracy", y, combine(np.stack(per), "soft"))

    return score


def test_tta_auto_keeps_only_views_that_improve_the_oof_blend(world, capsys):
    candidates = ["rot180", "zoom0.95", "vflip", "zoom1.05", "scale1.25"]
    out = pipeline.run(world.cfg, ["a", "b"], ["auto", *candidates], "equal", "soft", world.root / "auto" / "t.csv", None)
    row = read_ledger(out.parent / "ledger.csv").iloc[-1]
    chosen = row["views"].split("+")
    assert chosen[0] == "identity" and set(chosen) <= {"identity", *candidates}
    # replay the greedy choice independently: each member's OOF with the views, blended, scored
    score = _oof_scorer(world.cfg)

    sel, best = ["identity"], score(["identity"])
    base_score = best
    for v in candidates:
        s = score(sel + [v])
        if v in chosen:
            assert s > best, f"{v} was kept but does not raise OOF ({best} -> {s})"
            sel, best = sel + [v], s
        else:
            assert s <= best, f"{v} raises OOF ({best} -> {s}) but was dropped"
    together = score(["identity", *candidates])  # tried last: views that only help together
    if together > best:
        sel, best = ["identity", *candidates], together
    assert sel == chosen
    assert "rot180" not in chosen and "vflip" not in chosen  # digits upside down lower OOF
    assert float(row["cv"]) == pytest.approx(best) and float(row["tta_gain"]) == pytest.approx(best - base_score)
    assert best >= base_score
    assert f"TTA auto chose {row['views']}" in capsys.readouterr().out


def test_tta_auto_needs_the_oof_report(world):
    with pytest.raises(UserError, match="fitted on the OOF report"):
        pipeline.run(world.cfg, ["a"], ["auto"], [1.0], "soft", world.root / "x" / "x.csv", None, report=False)
    assert not (world.root / "x").exists()
    with pytest.raises(UserError, match="'auto' .* comes first in a list of candidates"):
        parse_views(["identity", "auto"])


def test_tta_auto_in_the_config_never_scores_below_its_candidates_or_identity(world, capsys, demo_cfg):
    """ensemble.tta: [auto, ...] is what a plain run uses; the choice's OOF score is at least both
    the identity view's and the whole list's."""
    candidates = ["zoom0.95", "zoom1.05", "rot180"]
    cfg = demo_cfg(world.demo, world.out, *ENSEMBLE, f"ensemble.tta=[auto,{','.join(candidates)}]")
    out = pipeline.run(cfg, ["a", "b"], None, "equal", "soft", world.root / "cfg_auto" / "t.csv", None)
    row = read_ledger(out.parent / "ledger.csv").iloc[-1]
    text = capsys.readouterr().out
    assert f"TTA auto chose {row['views']}" in text and "all together" in text
    score = _oof_scorer(cfg)

    chosen = score(row["views"].split("+"))
    assert float(row["cv"]) == pytest.approx(chosen)
    assert chosen >= score(["identity"]) and chosen >= score(["identity", *candidates])


def test_a_configured_view_that_lowers_oof_is_said(world, capsys):
    pipeline.run(world.cfg, ["a", "b"], ["identity", "zoom1.05", "rot180"], "equal", "soft",
                 world.root / "lowers" / "t.csv", None)
    text = capsys.readouterr().out
    assert "TTA views on the OOF blend (accuracy):" in text and "without rot180" in text
    score = _oof_scorer(world.cfg)

    full = score(["identity", "zoom1.05", "rot180"])
    for v in ("identity", "zoom1.05", "rot180"):
        lowers = score([u for u in ("identity", "zoom1.05", "rot180") if u != v]) > full
        assert (f"view {v} lowers the OOF accuracy: {full:.4f} with it" in text) == lowers, v
    assert "view rot180 lowers" in text  # digits upside down
