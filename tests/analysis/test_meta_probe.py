"""`python -m src.probe --meta` (issue 29): gradient boosting on the metadata columns alone, per fold
with each fold's own preprocessing, its OOF scores written and printed beside the other baselines."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, add_meta_columns
from sklearn.metrics import roc_auc_score

import src.probe as probe
from src.analysis.meta_probe import run_meta_probe
from src.core.cli import run_cli
from src.core.utils import UserError


@pytest.mark.parametrize("task", ["binary", "multilabel", "ordinal"])
def test_the_metadata_baseline_scores_its_oof(task, demo_cfg, meta_competition, tmp_path, capsys):
    comp, config, extra = meta_competition(task)
    cfg = demo_cfg(comp, tmp_path, *TINY, *extra, "data.n_folds=3", config=config)
    scores = run_meta_probe(cfg)
    oof = pd.read_csv(tmp_path / cfg.experiment.name / "probe" / "meta_oof.csv", dtype={"label": str},
                      keep_default_na=False)
    probs = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()
    assert len(oof) == len(pd.read_csv(comp / "train.csv")) and np.isfinite(probs).all()
    assert json.loads((tmp_path / cfg.experiment.name / "probe" / "meta.json").read_text())["oof"] == scores["oof"]
    assert f"metadata alone (gradient boosting on 2 columns) {scores['oof'][cfg.metric.name]:.4f}" in capsys.readouterr().out
    if task == "binary":  # `hint` is the label: the boosted trees find it, on rows their fold never saw
        assert roc_auc_score(oof["label"] == "1", oof["prob_1"]) == pytest.approx(scores["oof"]["roc_auc"])
        assert scores["oof"]["roc_auc"] > 0.95
    if task == "ordinal":
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)  # a grade distribution


def test_the_baseline_needs_metadata(demo_cfg, demo_dir, tmp_path):
    with pytest.raises(UserError, match="data.meta_cols is null"):
        run_meta_probe(demo_cfg(demo_dir, tmp_path, *TINY))


def test_the_command_line(task_competition, tmp_path, monkeypatch, capsys):
    comp, config, extra = task_competition("binary")
    comp = add_meta_columns(comp, tmp_path / "shuffled", shuffle_labels=True)
    monkeypatch.chdir(tmp_path)
    run_cli(probe.main, ["--config", str(config), "--meta", f"data.dir={comp}", "experiment.output_dir=out",
                         *extra, "data.meta_cols=auto", "wandb.mode=disabled"])
    scores = json.loads((tmp_path / "out" / "demo" / "probe" / "meta.json").read_text())
    assert scores["oof"]["roc_auc"] > 0.95  # the labels, shuffled against the images, are in `hint`
