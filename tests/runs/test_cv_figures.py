"""Every CV figure a command prints or writes is computed from the finished folds it uses: cv.json
after a single retrained fold, the probe's comparison and a Kaggle bundle's MANIFEST.json when a
fold is missing (a stale cv.json quoted 0.9687 after a retrain that scored 0.9673)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import src.train as train
from src import kaggle_kernel
from src.analysis.probe import run_probe
from src.core.cli import run_cli
from src.runs.layout import fold_paths


def _oof_accuracy(out, folds) -> float:
    oof = pd.concat([pd.read_csv(fold_paths(out, k).oof, dtype={"id": str, "label": str}) for k in folds])
    probs = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()
    return float(np.mean(probs.argmax(1) == oof["target"].to_numpy()))


@pytest.mark.slow
def test_cv_figures_follow_the_folds_that_exist_now(demo_dir, tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(demo_dir, tmp_path, "data.n_folds=2")
    train.run(cfg, "all")
    assert "2 folds trained in" in capsys.readouterr().out
    train.run(cfg, "all")  # nothing left to train: it says so rather than "2 folds in ..."
    again = capsys.readouterr().out
    assert "0 folds trained in" in again and "(2 finished earlier: [0, 1])" in again
    first = json.loads((cfg.out_dir / "cv.json").read_text())["oof"]["accuracy"]
    # fold 1 again, another seed (allowed explicitly): cv.json is rewritten from the folds as they are now
    train.run(tiny_cfg(demo_dir, tmp_path, "data.n_folds=2", "experiment.seed=7", "optim.lr=0.02"), 1, force=True,
              allow_mixed=True)
    cv = json.loads((cfg.out_dir / "cv.json").read_text())["oof"]["accuracy"]
    assert cv == pytest.approx(_oof_accuracy(cfg.out_dir, [0, 1])) and cv != pytest.approx(first)
    assert "rewritten" in capsys.readouterr().out
    # fold 1 unfinished: the probe and the bundle quote fold 0's OOF only, whatever cv.json says
    fold_paths(cfg.out_dir, 1).done.unlink()
    only0 = _oof_accuracy(cfg.out_dir, [0])
    assert run_probe(cfg, "logreg").finetuned == pytest.approx(only0)
    assert "OOF of its finished folds [0]" in capsys.readouterr().out
    run_cli(kaggle_kernel.main, ["build", "--config", "configs/demo.yaml", "--experiments", "demo", "--no-tta",
                                 "--no-wheels", "--out", str(tmp_path / "build"), f"data.dir={demo_dir}",
                                 f"experiment.output_dir={tmp_path}", "data.n_folds=2", "wandb.mode=disabled",
                                 "loader.num_workers=0", "ensemble.missing_folds=warn"])
    manifest = json.loads((tmp_path / "build" / "dataset" / "MANIFEST.json").read_text())
    assert manifest["cv"]["demo"]["folds"] == [0] and manifest["cv"]["demo"]["accuracy"] == pytest.approx(only0)
