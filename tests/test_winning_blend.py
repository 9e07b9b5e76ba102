"""Winning techniques on the blend side: the submission ledger, rank voting, the nested-fold
stacker and TTA views chosen on OOF.

Two tiny members (a and b) are trained for real on 2 folds of the session's digits demo;
submissions and ledgers go to tmp folders, never the repo's submissions/.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import src.ensemble as ens
import src.ledger as ledger_cli
from src.ledger_table import COLUMNS, correlation, read_ledger
from src.trainer import train_fold
from src.utils import UserError

TRAIN = ("data.n_folds=2", "model.name=test_resnet", "train.epochs=1", "train.limit_batches=20",
         "sched.warmup_epochs=0", "optim.lr=0.01", "loader.batch_size=32", "loader.num_workers=0",
         "data.check_images=false", "runtime.device=cpu")
ENSEMBLE = ("experiment.name=a", "data.n_folds=2", "runtime.device=cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_dir, demo_cfg) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("win")
    out = root / "out"
    for name, extra in (("a", ()), ("b", ("experiment.seed=7",))):
        cfg = demo_cfg(demo_dir, out, f"experiment.name={name}", *TRAIN, *extra)
        for k in range(2):
            train_fold(cfg, k)
    return SimpleNamespace(root=root, demo=demo_dir, out=out,
                           cfg=demo_cfg(demo_dir, out, *ENSEMBLE))


# ---------------------------------------------------------------- the ledger


def test_ledger_gains_one_row_per_submission_and_records_lb(world, capsys):
    sub_dir = world.root / "ledger_subs"
    ledger = sub_dir / "ledger.csv"
    first = ens.run(world.cfg, ["a"], ["identity"], "equal", "soft", sub_dir / "one.csv", None)
    df = read_ledger(ledger)
    assert len(df) == 1 and list(df.columns) == COLUMNS
    row = df.iloc[0]
    assert row["file"] == str(first) and row["members"] == "a" and row["views"] == "identity"
    assert row["configs"].startswith("a:") and row["commit"] and row["lb"] == ""
    # the CV recorded is the OOF score the report printed for that blend
    out = capsys.readouterr().out
    printed = [ln.split() for ln in out.splitlines() if ln.split()[:2] == ["a", "none"]]
    assert printed and float(row["cv"]) == pytest.approx(float(printed[0][2]), abs=1e-4)

    second = ens.run(world.cfg, ["a", "b"], ["identity", "zoom1.05"], "equal", "soft", sub_dir / "two.csv", None)
    ens.run(world.cfg, ["a", "b"], ["identity", "zoom1.05"], "equal", "soft", sub_dir / "two.csv", None)  # rewritten
    df = read_ledger(ledger)
    assert len(df) == 3
    assert df["members"].tolist() == ["a", "a+b", "a+b"] and df["views"].iloc[1] == "identity+zoom1.05"
    assert df["configs"].iloc[1].count(";") == 1

    ledger_cli.run(ledger, (str(second), 0.5))
    df = read_ledger(ledger)
    assert df["lb"].tolist() == ["", "", "0.5"]  # the latest row of that file
    with pytest.raises(UserError, match="not in the ledger"):
        ledger_cli.run(ledger, (str(sub_dir / "nope.csv"), 0.5))
    assert "correlation is shown from 3" in capsys.readouterr().out


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
