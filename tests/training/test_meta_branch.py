"""The image + metadata model (data.meta_cols, issue 29): it trains, validates and predicts with each
image's metadata on every task, its checkpoint alone rebuilds the same predictions, the metadata
carries a label the image does not, and without data.meta_cols the model is what it was."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import TINY, add_meta_columns
from sklearn.metrics import roc_auc_score

from src import kaggle_kernel
from src.analysis.model_bench import bench, meta_spec
from src.core.cli import run_cli
from src.core.config import CONFIG_DIR
from src.core.runtime import Runtime
from src.ensembling.pipeline import run as ensemble
from src.ensembling.pseudo_labels import make_pseudo
from src.models.meta_model import MetaModel
from src.models.model import build_model, freeze, param_groups
from src.runs.layout import fold_paths, read_done
from src.runs.members import member_oof_views, open_member
from src.training.averaged_experiment import average_experiment
from src.training.lr_finder import find_lr
from src.training.trainer import train_fold

REG_TINY = ("model.name=test_resnet", "train.epochs=1", "train.limit_batches=3", "loader.batch_size=16",
            "loader.num_workers=0", "data.check_images=false")
TASKS = ("multiclass", "binary", "topk", "multilabel", "ordinal", "regression")


def _cfg(demo_cfg, meta_competition, task, out, *extra):
    comp, config, overrides = meta_competition(task)
    tiny = REG_TINY if task == "regression" else TINY
    return demo_cfg(comp, out, *tiny, *overrides, "data.n_folds=2", *extra, config=config)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_with_metadata_and_ensembles_with_tta(task, demo_cfg, meta_competition, tmp_path):
    cfg = _cfg(demo_cfg, meta_competition, task, tmp_path / "out")
    for k in (0, 1):
        train_fold(cfg, k)
    ckpt = torch.load(fold_paths(cfg.out_dir, 0).best, weights_only=True)
    cols = ckpt["meta"]["cols"]
    assert cols == (["Subject Focus", "Eyes", "Face", "Near", "Action", "Accessory", "Group", "Collage", "Human",
                     "Occlusion", "Info", "Blur"] if task == "regression" else ["hint", "site"])
    assert read_done(fold_paths(cfg.out_dir, 0))["meta_cols"] == cols
    assert {k.split(".")[0] for k in ckpt["model"]} == {"backbone", "meta", "head"}
    # the checkpoint alone (and each fold's stored preprocessing) rebuilds the OOF predictions training wrote
    m = open_member(cfg.experiment.name, cfg.experiment.output_dir, "error", cfg.data.dir)
    _, logits = member_oof_views(m, ["identity"], Runtime.from_cfg(cfg.runtime), cfg.loader)
    for k in (0, 1):
        oof = pd.read_csv(fold_paths(cfg.out_dir, k).oof)
        written = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()
        np.testing.assert_allclose(m.task.activate(logits[k][0]), written, atol=1e-5)
    out = ensemble(cfg, tta=["identity", "hflip"], out=tmp_path / "sub" / "s.csv")
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    sample = pd.read_csv(cfg.data.dir + "/sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == list(sample.columns) and sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    assert json.loads(out.with_name("s.blend.json").read_text())["views"] == ["identity", "hflip"]


def test_the_metadata_carries_a_label_the_image_does_not(demo_cfg, task_competition, tmp_path):
    """Labels shuffled against the images, `hint` their value: image-only OOF AUC is chance, with
    the metadata branch it is near 1."""
    comp, config, extra = task_competition("binary")
    comp = add_meta_columns(comp, tmp_path / "shuffled", shuffle_labels=True)
    scores = {}
    for meta in ("auto", "null"):
        cfg = demo_cfg(comp, tmp_path / meta, *TINY, *extra, "data.n_folds=2", f"data.meta_cols={meta}",
                       "train.epochs=3", "train.limit_batches=null", "train.min_steps=0", config=config)
        for k in (0, 1):
            train_fold(cfg, k)
        oof = pd.concat(pd.read_csv(fold_paths(cfg.out_dir, k).oof) for k in (0, 1))
        scores[meta] = roc_auc_score(oof["label"].astype(str) == "1", oof["prob_1"])
    print(f"OOF roc_auc with metadata {scores['auto']:.3f}, image only {scores['null']:.3f}")
    assert scores["auto"] > 0.9 and scores["null"] < 0.7


SPEC = {"cols": ["a", "s"], "numeric": [{"col": "a", "mean": 0.0, "std": 1.0, "flag": True}],
        "categorical": [{"col": "s", "vocab": ["x", "y", "z"]}]}


def test_without_metadata_the_model_is_timms(demo_cfg, demo_dir, tmp_path):
    cfg = demo_cfg(demo_dir, tmp_path, *TINY)
    plain = build_model(cfg.model, 10, pretrained=False)
    assert not isinstance(plain, MetaModel)
    assert list(plain.state_dict()) == list(timm.create_model("test_resnet", num_classes=10).state_dict())
    model = build_model(cfg.model, 10, pretrained=False, meta=SPEC).eval()
    assert list(model.backbone.state_dict()) == [k for k in plain.state_dict() if not k.startswith("fc.")]
    x = torch.rand(4, 3, 32, 32)
    meta = torch.tensor([[0.5, 0, 1], [0, 1, 0], [2, 0, 3], [-1, 0, 2]])
    assert model((x, meta)).shape == (4, 10)
    other = meta.clone()
    other[0, 2] = 2  # another category of the first image changes its logits only
    diff = (model((x, meta)) - model((x, other))).abs().sum(1)
    assert diff[0] > 0 and torch.all(diff[1:] == 0)


def test_the_metadata_branch_is_never_frozen_and_has_its_own_rate(demo_cfg, demo_dir, tmp_path):
    cfg = demo_cfg(demo_dir, tmp_path, *TINY)
    model = build_model(cfg.model, 10, pretrained=False, meta=SPEC)
    frozen = freeze(model, stages=1)
    assert frozen.params and all(n.startswith("backbone.") for n in frozen.params)
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone."))
    groups = param_groups(model, 0.01, frozen, 0.1, include_frozen=False, meta_lr_mult=3.0)
    meta_ids = {id(p) for p in model.meta.parameters()}
    for g in groups:
        own = {id(p) for p in g["params"]}
        assert own <= meta_ids or not own & meta_ids  # a group is the metadata branch's or none of it
        assert g.get("lr_scale", 1.0) == (3.0 if own <= meta_ids else 1.0)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_swa_and_ema_carry_the_metadata(demo_cfg, meta_competition, tmp_path):
    cfg = _cfg(demo_cfg, meta_competition, "multiclass", tmp_path / "out", "train.swa=true", "train.swa_epochs=1",
               "train.ema=true")
    result = train_fold(cfg, 0)
    assert "swa" in result and (fold_paths(cfg.out_dir, 0).dir / "swa.pt").is_file()


def test_the_kaggle_rehearsal_rebuilds_the_metadata_from_the_test_table(demo_cfg, meta_competition, tmp_path, capsys):
    cfg = _cfg(demo_cfg, meta_competition, "binary", tmp_path / "outputs", "experiment.name=meta")
    for k in (0, 1):
        train_fold(cfg, k)
    local = ensemble(cfg, tta=["identity", "hflip"], out=tmp_path / "local.csv")
    common = ["--config", str(CONFIG_DIR / "demo.yaml"), "--out", str(tmp_path / "build"), f"data.dir={cfg.data.dir}",
              f"experiment.output_dir={tmp_path / 'outputs'}", "data.n_folds=2", "loader.num_workers=0",
              "wandb.mode=disabled", "data.task=binary", "metric.name=roc_auc", "data.meta_cols=auto",
              "loader.batch_size=16"]  # the local pass's batches
    run_cli(kaggle_kernel.main, ["build", *common[:4], "--experiments", "meta", "--tta", "identity", "hflip",
                                 "--no-wheels", *common[4:]])
    run_cli(kaggle_kernel.main, ["rehearse", *common])
    fake_input = tmp_path / "build" / "rehearsal" / "submission.csv"  # what the notebook wrote on the fake /kaggle
    kernel, here = pd.read_csv(fake_input, dtype={"id": str}), pd.read_csv(local, dtype={"id": str})
    assert kernel["id"].tolist() == here["id"].tolist()
    # the same numbers from the test table alone, up to the float rounding of the notebook's other thread count
    np.testing.assert_allclose(kernel["label"], here["label"], rtol=0, atol=1e-6)


def test_pseudo_labels_distillation_and_the_lr_finder_carry_the_metadata(demo_cfg, meta_competition, tmp_path):
    teacher = _cfg(demo_cfg, meta_competition, "multiclass", tmp_path / "out", "experiment.name=teacher")
    for k in (0, 1):
        train_fold(teacher, k)
    table = make_pseudo(teacher, ["teacher"], ["identity"], "equal", None, 0.0, False, 1, tmp_path / "pseudo.csv")
    pseudo = pd.read_csv(table, dtype=str)
    test_ids = set(pd.read_csv(teacher.data.dir + "/test.csv", dtype=str)["id"])
    assert len(pseudo) == 360 and set(pseudo["id"]) <= test_ids
    # a pseudo-labelled test image trains with its row of the test table
    student = _cfg(demo_cfg, meta_competition, "multiclass", tmp_path / "out", "experiment.name=student",
                   f"data.pseudo={table}", "loss.distill_from=teacher")
    train_fold(student, 0)
    ckpt = torch.load(fold_paths(student.out_dir, 0).best, weights_only=True)
    assert ckpt["meta"]["categorical"][0]["vocab"] == ["head", "leg", "palm", "torso"]  # palm: a test-only site
    found = find_lr(_cfg(demo_cfg, meta_competition, "multiclass", tmp_path / "out", "experiment.name=lr",
                         "optim.lr=find", "optim.find_steps=10"))
    assert found["steps_run"] >= 2 and np.isfinite(found["lr"])


def test_the_benchmark_times_the_metadata_branch(demo_cfg, meta_competition, tmp_path):
    cfg = _cfg(demo_cfg, meta_competition, "multiclass", tmp_path / "out", "runtime.device=cpu")
    spec = meta_spec(cfg)
    assert spec["cols"] == ["hint", "site"]
    with_meta = bench(cfg, steps=1, warmup=1, n_classes=10, meta=spec)
    image_only = bench(cfg, steps=1, warmup=1, n_classes=10)
    extra = with_meta["params"]["total"] - image_only["params"]["total"]
    model = build_model(cfg.model, 10, pretrained=False, meta=spec)
    assert extra == sum(p.numel() for p in model.meta.parameters()) + model.head.weight.shape[1] * 10 \
        - timm.create_model("test_resnet", num_classes=10).get_classifier().weight.numel()
    assert with_meta["infer_img_per_s"] > 0


def test_an_averaged_experiment_keeps_the_metadata(demo_cfg, meta_competition, tmp_path):
    cfg = _cfg(demo_cfg, meta_competition, "binary", tmp_path / "out", "train.epochs=2", "train.keep_top=2",
               "experiment.name=m")
    for k in (0, 1):
        train_fold(cfg, k)
    average_experiment(cfg, "m", top=2)
    ckpt = torch.load(fold_paths(tmp_path / "out" / "m_top2", 1).best, weights_only=True)
    assert ckpt["meta"] == torch.load(fold_paths(cfg.out_dir, 1).best, weights_only=True)["meta"]
    out = ensemble(cfg, experiments=["m_top2"], tta=["identity"], out=tmp_path / "avg.csv")
    assert len(pd.read_csv(out)) == len(pd.read_csv(cfg.data.dir + "/sample_submission.csv"))
