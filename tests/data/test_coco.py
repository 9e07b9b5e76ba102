"""data.layout=coco: COCO-style annotation files in iNaturalist 2019's and Herbarium 2020's real
layouts (tests/conftest.py build_coco_competition), read into the training and test tables,
then folds, one fold of training, the ensemble and src.score end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import COCO_OVERRIDES, DEMO_CONFIG, TINY, build_coco_competition

import src.ensemble as ensemble
import src.folds as folds
import src.score as score
import src.train as train
from src.core.cli import run_cli
from src.core.config import load_config
from src.core.utils import UserError
from src.data.tables import load_test_table, load_train_table
from src.evaluation.metrics import compute_metric


@pytest.fixture(scope="module")
def coco(demo_dir, tmp_path_factory):
    built = {}

    def make(style: str):
        if style not in built:
            built[style] = build_coco_competition(style, tmp_path_factory.mktemp(style), demo_dir)
        return built[style]

    return make


def _cfg(comp, style, tmp_path, *extra):
    return load_config("configs/demo.yaml", [f"data.dir={comp}", f"experiment.output_dir={tmp_path / 'out'}",
                                             "wandb.mode=disabled", *COCO_OVERRIDES[style], *extra])


@pytest.mark.parametrize("style", ["inat", "herbarium"])
def test_the_tables_join_images_annotations_and_categories(style, coco, tmp_path):
    comp = coco(style)
    cfg = _cfg(comp, style, tmp_path)
    table = load_train_table(cfg.data)
    doc_path = comp / cfg.data.annotations
    doc = json.loads(doc_path.read_bytes().decode("latin-1" if style == "herbarium" else "utf-8"))
    by_image = {str(a["image_id"]): str(a["category_id"]) for a in doc["annotations"]}
    files = {str(i["id"]): str(doc_path.parent / i["file_name"]) for i in doc["images"]}
    assert len(table) == len(doc["images"]) == 60
    assert dict(zip(table["id"], table["label"])) == by_image  # the label is the category id, as written back
    assert dict(zip(table["id"], table["path"])) == files
    test, sample = load_test_table(cfg.data)
    tdoc_path = comp / cfg.data.test_annotations
    tfiles = {str(i["id"]): str(tdoc_path.parent / i["file_name"]) for i in json.loads(tdoc_path.read_text())["images"]}
    assert test["id"].astype(str).tolist() == sample[cfg.data.id_col].astype(str).tolist()
    assert test["path"].tolist() == [tfiles[str(i)] for i in test["id"]]


def test_an_image_with_two_categories_needs_multilabel(coco, tmp_path):
    comp = coco("inat")
    doc = json.loads((comp / "train2019.json").read_text())
    doc["annotations"].append({"id": 1, "image_id": doc["images"][0]["id"], "category_id": 109})
    (tmp_path / "two.json").write_text(json.dumps({**doc, "images": [
        {**i, "file_name": str(comp / i["file_name"])} for i in doc["images"]]}))
    cfg = _cfg(comp, "inat", tmp_path, f"data.annotations={tmp_path / 'two.json'}")
    with pytest.raises(UserError, match="several categories .*data.task=multilabel"):
        load_train_table(cfg.data)
    table = load_train_table(_cfg(comp, "inat", tmp_path, f"data.annotations={tmp_path / 'two.json'}",
                                  "data.task=multilabel").data)
    first = table.iloc[0]["label"].split()
    assert len(first) == 2 and "109" in first
    assert (table["label"].str.split().str.len()[1:] == 1).all()


def test_an_unannotated_image_is_left_out_and_said(coco, tmp_path, capsys):
    comp = coco("inat")
    doc = json.loads((comp / "train2019.json").read_text())
    dropped = doc["annotations"].pop(0)["image_id"]
    (comp / "one_unannotated.json").write_text(json.dumps(doc))
    table = load_train_table(_cfg(comp, "inat", tmp_path, "data.annotations=one_unannotated.json").data)
    assert len(table) == 59 and str(dropped) not in set(table["id"])
    assert "1 image of" in capsys.readouterr().out
    (comp / "one_unannotated.json").unlink()


def test_coco_needs_its_annotation_file():
    with pytest.raises(UserError, match="data.layout=coco reads its training table from data.annotations"):
        load_config("configs/demo.yaml", ["data.layout=coco"])
    with pytest.raises(UserError, match="data.layout=coco"):
        load_config("configs/demo.yaml", ["data.annotations=train2019.json"])


@pytest.mark.slow
@pytest.mark.parametrize("style", ["inat", "herbarium"])
def test_folds_train_ensemble_and_score_in_the_real_layout(style, coco, tmp_path, monkeypatch, capsys):
    """The submission writes category ids in the sample's column, every test id once, and
    src.score's number is the metric of those ids against the solution."""
    comp = coco(style)
    over = [f"data.dir={comp}", f"experiment.output_dir={tmp_path / 'out'}", "wandb.mode=disabled", *TINY,
            *COCO_OVERRIDES[style], "data.n_folds=2", "runtime.device=cpu", "experiment.name=coco"]
    monkeypatch.chdir(tmp_path)
    repo_cfg = str(DEMO_CONFIG)
    run_cli(folds.main, ["--config", repo_cfg, *over])
    run_cli(train.main, ["--fold", "all", "--config", repo_cfg, *over])
    out = tmp_path / "sub.csv"
    run_cli(ensemble.main, ["--config", repo_cfg, "--no-tta", "--out", str(out), *over])
    id_col, pred_col = ("id", "predicted") if style == "inat" else ("Id", "Predicted")
    sub = pd.read_csv(out)
    sol = pd.read_csv(comp / "solution.csv")
    assert list(sub.columns) == [id_col, pred_col] and sub[id_col].tolist() == sol[id_col].tolist()
    base = 100 if style == "inat" else 15500
    assert sub[pred_col].between(base, base + 9).all()
    capsys.readouterr()
    run_cli(score.main, [str(out), "--config", repo_cfg, *over])
    said = capsys.readouterr().out.split()
    metric = COCO_OVERRIDES[style][-1].split("=")[1]
    classes = sorted(set(sol[pred_col]) | set(sub[pred_col]))
    y = sol[pred_col].map(classes.index).to_numpy()
    probs = np.eye(len(classes))[sub[pred_col].map(classes.index).to_numpy()]
    assert said[said.index(metric) + 1] == f"{compute_metric(metric, y, probs):.4f}"
