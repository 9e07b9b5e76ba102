"""An open-set label among top-k rows (ensemble.new_label: Humpback Whale's new_whale, about 38 % of
its images, MAP@5): trained as a class, ranked by a threshold fitted on OOF instead of its own
probability, the threshold kept in the .blend.json so the Kaggle notebook reuses it (issue 29, item 7.2).

No mocks: the top-k digits demo with its 7s, 8s and 9s relabelled new_whale (30 % of the images,
as unseen individuals), test_resnet for one short epoch, through the real commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import src.ensemble as ensemble
import src.kaggle_kernel as kaggle_kernel
import src.score as score
import src.train as train
from src.core.cli import run_cli
from src.core.config import CONFIG_DIR
from src.demo import build_topk_demo
from src.evaluation.decoding import fit_new_label, rank_with_new_label, ranked_map
from src.evaluation.scoring import written_map

TOPK_CONFIG = CONFIG_DIR / "demo_topk.yaml"
UNSEEN = ("7", "8", "9")


@pytest.fixture(scope="module")
def whales(tmp_path_factory) -> Path:
    comp = build_topk_demo(tmp_path_factory.mktemp("whales") / "whales")
    for name in ("train.csv", "solution.csv"):
        table = pd.read_csv(comp / name, dtype=str)
        table.loc[table["label"].isin(UNSEEN), "label"] = "new_whale"
        table.to_csv(comp / name, index=False)
    return comp


def _args(comp: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TOPK_CONFIG), f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled",
            "train.epochs=1", "train.limit_batches=6", "data.check_images=false", "data.n_folds=2",
            "loader.num_workers=0", *extra]


@pytest.fixture(scope="module")
def trained(whales, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whale_out")
    run_cli(train.main, ["--fold", "all", *_args(whales, out)])
    return out


def test_the_new_label_enters_where_the_other_probabilities_fall_below_the_threshold():
    probs = np.array([[0.50, 0.30, 0.10, 0.05, 0.05],   # 0.5, 0.3 >= 0.25: new (4) third
                      [0.10, 0.20, 0.30, 0.40, 0.00],   # 0.4, 0.3 >= 0.25: third
                      [0.05, 0.05, 0.05, 0.05, 0.80]])  # nothing >= 0.25: first, whatever its own probability
    assert rank_with_new_label(probs, 3, 4, 0.25).tolist() == [[0, 1, 4], [3, 2, 4], [4, 0, 1]]
    assert rank_with_new_label(probs, 3, 4, 0.0).tolist() == [[0, 1, 2], [3, 2, 1], [0, 1, 2]]  # never enters
    assert rank_with_new_label(probs, 3).tolist() == [[0, 1, 2], [3, 2, 1], [4, 0, 1]]  # plain top 3


def test_map_at_k_of_ranked_rows_by_hand_and_as_the_scorer_computes_it():
    ranked = np.array([[0, 1, 4], [3, 2, 4], [4, 0, 1], [2, 3, 1]])
    y = np.array([1, 4, 4, 0])  # positions 2, 3, 1, absent: (1/2 + 1/3 + 1 + 0) / 4
    assert ranked_map(ranked, y) == pytest.approx((0.5 + 1 / 3 + 1.0) / 4)
    names = np.array(list("abcde"))
    assert ranked_map(ranked, y) == pytest.approx(written_map(names[ranked].tolist(), names[y].tolist(), 3))


def test_the_fitted_threshold_beats_leaving_the_new_label_out_where_30_percent_are_unseen():
    rng = np.random.default_rng(0)
    n, c, new = 1000, 8, 7
    y = np.where(rng.random(n) < 0.3, new, rng.integers(0, new, n))
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y]
    logits[:, new] -= 1.5  # the new label's own probability is poorly calibrated, as a mixed class is
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    th, with_new, plain = fit_new_label(probs, y, 5, new)
    never = ranked_map(rank_with_new_label(probs, 5, new, 0.0), y)
    assert with_new > never + 0.05 and with_new >= plain and 0 < th < 1
    assert with_new == pytest.approx(ranked_map(rank_with_new_label(probs, 5, new, th), y))


def test_ensemble_fits_keeps_and_applies_the_threshold(whales, trained, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*_args(whales, trained, "ensemble.new_label=new_whale"), "--tta", "identity",
                            "--out", str(out)])
    said = capsys.readouterr().out
    line = next(s for s in said.splitlines() if s.startswith("new_whale threshold"))
    blend = json.loads(out.with_name("sub.blend.json").read_text())
    th = blend["new_label_threshold"]
    assert f"{th:.2f}" in line and "OOF MAP@5" in line and "without" in line and blend["new_label"] == "new_whale"
    with_new, without = (float(x) for x in line.split("MAP@5 ")[1].replace(" with it, ", " ").split()[:2])
    assert with_new >= without
    probs = pd.read_csv(out.with_name("sub_probs.csv"))
    classes = list(probs.columns[1:])
    expected = rank_with_new_label(probs[classes].to_numpy(), 5, classes.index("new_whale"), th)
    sub = pd.read_csv(out, dtype=str)
    assert sub["label"].str.split().tolist() == np.asarray(classes, dtype=object)[expected].tolist()
    truth = pd.read_csv(whales / "solution.csv", dtype=str).set_index("id").loc[sub["id"], "label"].tolist()
    run_cli(score.main, [str(out), *_args(whales, trained)])
    assert f"map@5 {written_map(sub['label'].str.split().tolist(), truth, 5):.4f}" in capsys.readouterr().out


def test_the_kaggle_notebook_reuses_the_blends_threshold(whales, trained, tmp_path, capsys):
    root = tmp_path / "kernel"
    shutil.copytree(trained, root / "outputs")
    args = [*_args(whales, root / "outputs", "ensemble.new_label=new_whale"), "--out", str(root / "build")]
    run_cli(kaggle_kernel.main, ["build", *args, "--experiments", "demo_topk", "--tta", "identity", "--no-wheels"])
    manifest = json.loads((root / "build" / "dataset" / "MANIFEST.json").read_text())
    th = manifest["blend"]["new_label_threshold"]
    assert th is not None
    run_cli(kaggle_kernel.main, ["rehearse", *args])
    assert "submission checked" in capsys.readouterr().out
    local = tmp_path / "local.csv"
    run_cli(ensemble.main, [*_args(whales, root / "outputs", "ensemble.new_label=new_whale"), "--tta", "identity",
                            "--out", str(local)])
    assert json.loads(local.with_name("local.blend.json").read_text())["new_label_threshold"] == th
    assert (root / "build" / "rehearsal" / "submission.csv").read_bytes() == local.read_bytes()


@pytest.mark.parametrize("task", ["multilabel", "ordinal", "regression", "binary"])
def test_other_tasks_refuse_a_new_label_in_one_sentence(task):
    from src.core.tasks import make_task
    from src.core.utils import UserError
    from src.ensembling.submission import new_label_k

    classes = {"multilabel": ("a", "b"), "ordinal": ("0", "1", "2"), "regression": ("y",), "binary": ("0", "1")}[task]
    sample = pd.DataFrame({"id": ["x"], **({c: [0.5] for c in classes} if task == "multilabel" else {"y": ["0.5"]})})
    with pytest.raises(UserError, match=r"^ensemble.new_label=new_whale places an open-set label .* not topk .*null$"):
        new_label_k("new_whale", sample, "id", "auto", "rmse" if task == "regression" else "accuracy", None,
                    make_task(task, classes))


def test_a_blend_written_before_the_new_label_reads_without_one(whales, trained, tmp_path):
    from src.ensembling.blend import Blend, body_digest

    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, [*_args(whales, trained), "--tta", "identity", "--out", str(out)])
    body = json.loads(out.with_name("sub.blend.json").read_text())
    old = {k: v for k, v in body.items() if k not in ("digest", "new_label", "new_label_threshold", "top_k")}
    blend = Blend.from_json({**old, "digest": body_digest(old)})
    assert (blend.new_label, blend.new_label_threshold, blend.top_k) == (None, None, None)
    with pytest.raises(Exception, match="edited after it was fitted"):
        Blend.from_json({**old, "new_label_threshold": 0.5, "digest": body_digest(old)})
