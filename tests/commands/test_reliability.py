"""Results that used to be silently wrong, and mistakes that used to be refused or end in a
traceback (the reliability issue); the one-sentence table of bad inputs is test_bad_inputs.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from src.core.config import load_config
from src.core.runtime import Runtime, predict
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.data.loaders import ImageDataset, make_loader
from src.data.tables import load_test_table
from src.data.transforms import build_transform, resolve_norm
from src.ensembling import pipeline
from src.models.model import build_model
from src.runs.layout import fold_paths
from src.runs.members import open_member
from src.training.trainer import train_fold
from src.tuning.search_space import load_space

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- weights


def test_a_given_weights_file_is_loaded_even_with_pretrained_false(demo_cfg, demo_dir, tmp_path):
    cfg = demo_cfg(demo_dir, tmp_path, "model.name=test_resnet")
    source = build_model(cfg.model, 10, pretrained=False)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)  # unlike any fresh initialization
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    cfg = demo_cfg(demo_dir, tmp_path, "model.name=test_resnet", "model.pretrained=false",
                   f"model.pretrained_path={path}")
    model = build_model(cfg.model, 10)
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name


def test_freezing_layers_that_loaded_no_weights_warns(demo_cfg, demo_dir, tmp_path):
    cfg = demo_cfg(demo_dir, tmp_path, "model.name=resnet18", "model.freeze_before=layer4.0.conv1",
                   "train.epochs=1", "train.limit_batches=1", "loader.num_workers=0", "data.check_images=false")
    with pytest.warns(UserWarning, match="frozen at their random initialization"):
        train_fold(cfg, 0, dry_run_only=True)


def test_offline_hub_fails_at_once_without_retries(demo_dir, overrides_for, tmp_path):
    """No network here: the hub is probed once, the local cache is tried, and the sentence names
    the local-file alternative, without huggingface_hub's minute of 'Retrying' warnings."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", "--config", "configs/demo.yaml", "--fold", "0", "--dry-run",
         *overrides_for(demo_dir, tmp_path / "out", "model.pretrained=true", "model.name=resnet18",
                        "data.check_images=false")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "not reachable" in line and "model.pretrained_path=" in line and "model.pretrained=false" in line


# ---------------------------------------------------------------- folds of one experiment


@pytest.fixture
def fold0(demo_dir, tiny_cfg, tmp_path):
    cfg = tiny_cfg(demo_dir, tmp_path, "data.n_folds=2")
    train_fold(cfg, 0)
    return tmp_path


def test_a_fold_with_other_settings_is_refused(demo_dir, tiny_cfg, fold0):
    with pytest.raises(UserError, match=r"differ from fold 0 of experiment demo in \['aug.img_size'\].*--allow-mixed-configs"):
        train_fold(tiny_cfg(demo_dir, fold0, "data.n_folds=2", "aug.img_size=48"), 1)
    assert not fold_paths(fold0 / "demo", 1).dir.exists()
    # Settings that do not change what is computed may differ.
    train_fold(tiny_cfg(demo_dir, fold0, "data.n_folds=2", "loader.num_workers=1", "wandb.mode=offline"), 1)


def test_mixed_folds_each_predict_with_their_own_transforms(demo_dir, demo_cfg, tiny_cfg, fold0, tmp_path):
    train_fold(tiny_cfg(demo_dir, fold0, "data.n_folds=2", "aug.img_size=48"), 1, allow_mixed=True)
    member = open_member("demo", str(fold0), "error", str(demo_dir))
    assert [member.configs[k].aug.img_size for k in (0, 1)] == [32, 48]
    out = pipeline.run(demo_cfg(demo_dir, fold0, "data.n_folds=2", "loader.num_workers=0"), ["demo"], ["identity"],
                       "equal", "logits", tmp_path / "mixed.csv")
    assert out.is_file()
    # Independently: each fold's model on test images at its own size, logits averaged.
    rt = Runtime(torch.device("cpu"))
    test, _ = load_test_table(member.cfg.data)
    logits = []
    for k in (0, 1):
        cfg = member.configs[k]
        model = member.model(k, rt)
        mean, std = resolve_norm(cfg.aug, model.pretrained_cfg)
        loader = make_loader(ImageDataset(test["path"], None, build_transform(cfg.aug, False, mean, std)), cfg.loader)
        logits.append(predict([model], loader, rt)[0, 0])
    expected = np.exp(np.mean(logits, 0) - np.mean(logits, 0).max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = pd.read_csv(tmp_path / "mixed_probs.csv").drop(columns="id").to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- provenance


@pytest.fixture
def two_experiments(demo_dir, tiny_cfg, tmp_path):
    for name in ("a", "b"):
        cfg = tiny_cfg(demo_dir, tmp_path, "data.n_folds=2", f"experiment.name={name}")
        for k in (0, 1):
            train_fold(cfg, k)
    return tmp_path


def test_a_best_pt_from_another_experiment_is_refused(demo_dir, two_experiments):
    out = two_experiments
    shutil.copy(fold_paths(out / "b", 0).best, fold_paths(out / "a", 0).best)
    with pytest.raises(UserError, match=r"a/fold0/best.pt has changed since fold 0 of a finished \(truncated, corrupted or replaced"):
        open_member("a", str(out), "error", str(demo_dir))


def test_an_oof_file_from_another_run_is_refused(demo_dir, demo_cfg, two_experiments, tmp_path):
    out = two_experiments
    shutil.copy(fold_paths(out / "b", 1).oof, fold_paths(out / "a", 1).oof)
    cfg = demo_cfg(demo_dir, out, "data.n_folds=2", "loader.num_workers=0")
    with pytest.raises(UserError, match=r"a/fold1/oof.csv comes from another training run"):
        pipeline.run(cfg, ["a"], ["identity"], "equal", "soft", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_reordered_or_partial_sample_submission_is_accepted(demo_dir, demo_cfg, two_experiments, tmp_path):
    """Test ids come from the sample submission given now, while the training folder still exists."""
    comp = tmp_path / "comp"
    shutil.copytree(demo_dir, comp, copy_function=os.link)
    (comp / "sample_submission.csv").unlink()
    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str)
    part = sample.iloc[::-1].iloc[:100]  # reversed, a subset
    part.to_csv(comp / "sample_submission.csv", index=False)
    cfg = demo_cfg(comp, two_experiments, "data.n_folds=2", "loader.num_workers=0")
    out = pipeline.run(cfg, ["a"], ["identity"], "equal", "soft", tmp_path / "part.csv")
    sub = pd.read_csv(out, dtype=str)
    assert list(sub["id"]) == list(part["id"])
    full = pipeline.run(demo_cfg(demo_dir, two_experiments, "data.n_folds=2", "loader.num_workers=0"), ["a"],
                        ["identity"], "equal", "soft", tmp_path / "full.csv")
    probs_full = pd.read_csv(full.with_name("full_probs.csv"), dtype={"id": str}).set_index("id")
    probs_part = pd.read_csv(out.with_name("part_probs.csv"), dtype={"id": str}).set_index("id")
    np.testing.assert_allclose(probs_part.to_numpy(), probs_full.loc[probs_part.index].to_numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- labels


def test_labels_differing_only_by_spaces_are_one_class(demo_dir, demo_cfg, tmp_path, capsys):
    comp = tmp_path / "comp"
    shutil.copytree(demo_dir, comp, copy_function=os.link)
    table = pd.read_csv(demo_dir / "train.csv", dtype=str)
    table.loc[table.index[::7], "label"] = table.loc[table.index[::7], "label"] + " "  # '3 '
    table.loc[table.index[3::11], "label"] = " " + table.loc[table.index[3::11], "label"]  # ' 3'
    (comp / "train.csv").unlink()
    table.to_csv(comp / "train.csv", index=False)
    df, classes, _ = load_or_create_folds(demo_cfg(comp, tmp_path / "out"))
    assert classes == [str(i) for i in range(10)]
    assert set(df["label"]) == set(classes)
    assert "stripped surrounding whitespace from" in capsys.readouterr().out


# ---------------------------------------------------------------- wrongly refused


def test_a_numeric_experiment_name_is_a_name(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", ["experiment.name=123", f"experiment.output_dir={tmp_path}"])
    assert cfg.experiment.name == "123" and cfg.out_dir == tmp_path / "123"


def test_a_search_space_without_timeout_uses_the_documented_default(tmp_path):
    space = yaml.safe_load((REPO / "configs" / "tune" / "demo.yaml").read_text())
    del space["timeout"]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert load_space(path, REPO / "configs" / "demo.yaml", []).timeout is None


def test_a_search_range_outside_a_keys_constraint_is_refused_before_any_trial(tmp_path):
    space = yaml.safe_load((REPO / "configs" / "tune" / "demo.yaml").read_text())
    space["params"]["optim.lr"] = {"type": "float", "low": -1.0, "high": 0.1}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(UserError, match=r"optim.lr cannot take -1.0: optim.lr=-1.0 from the search space is invalid"):
        load_space(path, REPO / "configs" / "demo.yaml", [])
