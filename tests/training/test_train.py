"""Training stage: one fold end to end, skip/force/resume, freezing, divergence, CV over folds,
every optimizer and schedule, EMA, mixup/cutmix, W&B offline and the --dry-run CLI.

Everything runs the real code on the digits demo at 32 px with a few batches per epoch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY

import src.train as train
from src.core.runtime import Runtime, predict
from src.core.utils import UserError, derive_seed, seed_everything
from src.data.folds import load_or_create_folds
from src.data.loaders import ImageDataset, make_loader
from src.data.transforms import build_transform
from src.models.model import build_model, freeze, param_counts
from src.runs.checkpoint import load_checkpoint
from src.runs.layout import file_sha1, fold_paths
from src.training.engine import TrainingDiverged
from src.training.trainer import train_fold

REPO = Path(__file__).resolve().parents[2]
FREEZE_AT = "layer4.0.conv1"
ARTIFACTS = ["best.pt", "last.pt", "oof.csv", "history.csv", "curves.png", "confusion_matrix.png", "done.json"]


def _initial_model(cfg, fold: int, n_classes: int = 10) -> torch.nn.Module:
    """The model exactly as train_fold builds it before the first step."""
    seed_everything(derive_seed(cfg.experiment.seed, fold + 1))
    return build_model(cfg.model, n_classes)


def _frozen_state_keys(model: torch.nn.Module, before: str) -> tuple[list[str], list[str]]:
    """(frozen parameter names, state-dict keys of frozen params and frozen BatchNorm buffers)."""
    frozen = freeze(model, before=before)
    keys = list(frozen.params) + [
        k for k in model.state_dict() if any(k.startswith(m + ".") for m in frozen.bn_modules) and k not in frozen.params
    ]
    return frozen.params, keys


def _mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir()) if p.is_file()}


def _age(d: Path, seconds: int = 1000) -> None:
    """Push every file's mtime into the past so a rewrite is visible whatever the clock resolution."""
    for p in d.iterdir():
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def _finite_history(out: Path) -> pd.DataFrame:
    hist = pd.read_csv(out / "history.csv")
    for col in ("train_loss", "val_loss", "lr"):
        assert np.isfinite(hist[col]).all(), (col, hist[col].tolist())
    return hist


# ---------------------------------------------------------------- one fold, end to end


@pytest.fixture(scope="module")
def trained(demo_dir: Path, tmp_path_factory, tiny_cfg):
    """Fold 0 trained for one tiny epoch; tests only read it."""
    cfg = tiny_cfg(demo_dir, tmp_path_factory.mktemp("trained"))
    result = train_fold(cfg, 0)
    return cfg, result


def test_one_fold_writes_every_artifact(trained):
    cfg, result = trained
    out = fold_paths(cfg.out_dir, 0).dir
    assert out == cfg.out_dir / "fold0"
    missing = [f for f in ARTIFACTS if not (out / f).is_file()]
    assert missing == []
    for png in ("curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "done.json").read_text()) == result
    assert result["fold"] == 0 and result["epochs_run"] == 1 and result["best_epoch"] == 0
    assert 0.0 <= result["accuracy"] <= 1.0
    saved = yaml.safe_load((cfg.out_dir / "config.yaml").read_text())
    assert saved == cfg.to_dict()
    hist = _finite_history(out)
    assert hist["epoch"].tolist() == [0]
    assert hist["val_accuracy"].iloc[0] == pytest.approx(result["accuracy"])


def test_oof_covers_exactly_the_validation_fold(trained):
    cfg, _ = trained
    df, classes, _ = load_or_create_folds(cfg)
    oof = pd.read_csv(fold_paths(cfg.out_dir, 0).dir / "oof.csv", dtype={"id": str, "label": str})
    expected = df.loc[df["fold"] == 0, "id"]
    assert not oof["id"].duplicated().any()
    assert len(oof) == len(expected)
    assert set(oof["id"]) == set(expected)
    assert (oof["fold"] == 0).all()
    prob_cols = [c for c in oof.columns if c.startswith("prob_")]
    assert prob_cols == [f"prob_{c}" for c in classes] and len(prob_cols) == 10
    probs = oof[prob_cols].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert (probs >= 0).all()
    truth = df.set_index("id").loc[oof["id"]]
    assert oof["label"].tolist() == truth["label"].tolist()
    assert oof["target"].tolist() == truth["target"].tolist()


def test_checkpoints_load_with_weights_only_and_reproduce_the_oof(trained):
    cfg, _ = trained
    out = fold_paths(cfg.out_dir, 0).dir
    df, classes, _ = load_or_create_folds(cfg)
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(out / name)
        raw = torch.load(out / name, map_location="cpu", weights_only=True)
        assert raw.keys() == ckpt.keys()
        assert ckpt["config"] == cfg.to_dict()
        assert ckpt["classes"] == classes
        assert ckpt["fold"] == 0 and ckpt["epoch"] == 0
        model = build_model(cfg.model, len(classes))
        model.load_state_dict(ckpt["model"])  # strict: every key fits
    assert load_checkpoint(out / "last.pt")["finished"] is True

    # best.pt's weights give exactly the stored out-of-fold probabilities
    model = build_model(cfg.model, len(classes))
    model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str, "label": str})
    val = df[df["fold"] == 0].set_index("id").loc[oof["id"]]
    ds = ImageDataset(val["path"], val["target"], build_transform(cfg.aug, False, tuple(cfg.aug.mean), tuple(cfg.aug.std)))
    # Predict as training validated: on its device, with its autocast dtype (bf16 on CUDA).
    rt = Runtime.from_cfg(cfg.runtime)
    logits = predict([rt.model(model)], make_loader(ds, cfg.loader), rt)[0, 0]
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    atol = 1e-5 if rt.dtype is None else 2e-3
    np.testing.assert_allclose(probs, oof[[f"prob_{c}" for c in classes]].to_numpy(), atol=atol)


# ---------------------------------------------------------------- skip, force, unfinished


def test_finished_fold_is_skipped_forced_or_refused(demo_dir: Path, tmp_path: Path, capsys, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "train.limit_batches=2")
    first = train_fold(cfg, 0)
    out = fold_paths(cfg.out_dir, 0).dir
    _age(out)
    before = _mtimes(out)
    assert set(ARTIFACTS) <= set(before)
    capsys.readouterr()

    again = train_fold(cfg, 0)
    assert again == first == json.loads((out / "done.json").read_text())
    assert _mtimes(out) == before
    assert "finished earlier" in capsys.readouterr().out

    forced = train_fold(cfg, 0, force=True)
    after = _mtimes(out)
    rewritten = [f for f in ARTIFACTS if after[f] != before[f]]
    assert rewritten == ARTIFACTS
    assert forced["epochs_run"] == 1

    (out / "done.json").unlink()
    _age(out)
    before = _mtimes(out)
    with pytest.raises(UserError, match="unfinished run.*--resume"):
        train_fold(cfg, 0)
    assert _mtimes(out) == before  # nothing touched
    assert not (out / "done.json").exists()


# ---------------------------------------------------------------- freezing inside training


def test_frozen_layers_keep_their_initial_weights(demo_dir: Path, tmp_path: Path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", f"model.freeze_before={FREEZE_AT}", "train.epochs=2",
                   "train.limit_batches=2", "optim.lr=0.05")
    result = train_fold(cfg, 0)
    init = _initial_model(cfg, 0)
    init_sd = {k: v.clone() for k, v in init.state_dict().items()}
    frozen_params, frozen_keys = _frozen_state_keys(init, FREEZE_AT)
    assert result["params"] == param_counts(init)
    assert result["params"]["frozen"] == sum(p.numel() for n, p in init.named_parameters() if n in frozen_params) > 0

    out = fold_paths(cfg.out_dir, 0).dir
    best, last = load_checkpoint(out / "best.pt")["model"], load_checkpoint(out / "last.pt")["model"]
    assert any(k.endswith("running_var") for k in frozen_keys)
    for sd in (best, last):
        moved = [k for k in frozen_keys if not torch.equal(sd[k], init_sd[k])]
        assert moved == []
    # ... while the trainable tail did train (and its BatchNorm statistics moved)
    for k in ("fc.weight", "layer4.0.downsample.1.weight", "layer4.0.bn1.running_mean"):
        assert not torch.equal(last[k], init_sd[k]), k


def test_unfreeze_epoch_trains_everything_with_a_scaled_backbone_lr(
    demo_dir: Path, tmp_path: Path, capsys, tiny_cfg
):
    mult = 0.1
    cfg = tiny_cfg(demo_dir, tmp_path / "out", f"model.freeze_before={FREEZE_AT}", "model.unfreeze_epoch=1",
                   f"model.backbone_lr_mult={mult}", "train.epochs=2", "train.limit_batches=2", "sched.warmup_epochs=0")
    out = fold_paths(cfg.out_dir, 0).dir
    snapshots = {}

    def on_epoch(epoch: int, value: float) -> None:
        snapshots[epoch] = load_checkpoint(out / "last.pt")

    train_fold(cfg, 0, on_epoch=on_epoch)
    assert sorted(snapshots) == [0, 1]
    assert "unfroze all parameters" in capsys.readouterr().out
    init = _initial_model(cfg, 0)
    init_sd = {k: v.clone() for k, v in init.state_dict().items()}
    frozen_params, frozen_keys = _frozen_state_keys(init, FREEZE_AT)
    n_params = len(list(init.parameters()))

    def backbone_and_head(opt_state: dict) -> tuple[set[int], set[int]]:
        bb = {i for g in opt_state["param_groups"] if "lr_scale" in g for i in g["params"]}
        head = {i for g in opt_state["param_groups"] if "lr_scale" not in g for i in g["params"]}
        return bb, head

    # epoch 0: the backbone is in the optimizer (to be unfrozen) but got no update and no state
    ep0 = snapshots[0]
    bb, head = backbone_and_head(ep0["train_state"]["optimizer"])
    assert len(bb) == len(frozen_params) and len(bb) + len(head) == n_params
    assert set(ep0["train_state"]["optimizer"]["state"]) == head
    assert [k for k in frozen_keys if not torch.equal(ep0["model"][k], init_sd[k])] == []

    # epoch 1: every parameter was trained
    ep1 = load_checkpoint(out / "last.pt")
    opt = ep1["train_state"]["optimizer"]
    assert set(opt["state"]) == bb | head
    changed = [n for n in frozen_params if not torch.equal(ep1["model"][n], ep0["model"][n])]
    assert len(changed) == len(frozen_params)
    for k in ("conv1.1.running_mean", "layer1.0.bn1.running_var"):
        assert not torch.equal(ep1["model"][k], ep0["model"][k]), k  # BatchNorm left eval mode too

    # the backbone groups run at backbone_lr_mult times the head's lr
    head_lrs = {g["lr"] for g in opt["param_groups"] if "lr_scale" not in g}
    bb_lrs = {g["lr"] for g in opt["param_groups"] if "lr_scale" in g}
    assert len(head_lrs) == 1 and len(bb_lrs) == 1
    head_lr, bb_lr = head_lrs.pop(), bb_lrs.pop()
    assert head_lr > 0
    assert bb_lr == pytest.approx(mult * head_lr, rel=1e-9)


# ---------------------------------------------------------------- resume


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(demo_dir: Path, tmp_path: Path, capsys, tiny_cfg):
    extra = ("train.epochs=2", "train.limit_batches=3")
    cfg_a = tiny_cfg(demo_dir, tmp_path / "a", *extra)
    cfg_b = tiny_cfg(demo_dir, tmp_path / "b", *extra)
    res_a = train_fold(cfg_a, 0)

    def crash_after_first_epoch(epoch: int, value: float) -> None:
        if epoch == 0:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_fold(cfg_b, 0, on_epoch=crash_after_first_epoch)
    out_b = fold_paths(cfg_b.out_dir, 0).dir
    assert not (out_b / "done.json").exists()
    assert load_checkpoint(out_b / "last.pt")["epoch"] == 0
    with pytest.raises(UserError, match="unfinished"):
        train_fold(cfg_b, 0)
    capsys.readouterr()

    res_b = train_fold(cfg_b, 0, resume=True)
    assert "resuming after epoch 0" in capsys.readouterr().out
    last_a = load_checkpoint(fold_paths(cfg_a.out_dir, 0).dir / "last.pt")
    last_b = load_checkpoint(out_b / "last.pt")
    assert last_a["epoch"] == last_b["epoch"] == 1
    assert last_a["model"].keys() == last_b["model"].keys()
    differing = [k for k in last_a["model"]
                 if not torch.allclose(last_a["model"][k].float(), last_b["model"][k].float(), atol=1e-6)]
    assert differing == []
    hist_a = pd.read_csv(fold_paths(cfg_a.out_dir, 0).dir / "history.csv")
    hist_b = pd.read_csv(out_b / "history.csv")
    assert hist_a["epoch"].tolist() == hist_b["epoch"].tolist() == [0, 1]
    for col in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_f1_macro"):
        np.testing.assert_allclose(hist_a[col], hist_b[col], rtol=1e-5, atol=1e-6, err_msg=col)
    assert res_a.pop("params") == res_b.pop("params")
    for res, cfg in ((res_a, cfg_a), (res_b, cfg_b)):  # the run's identity: its own best.pt and run id
        fp = fold_paths(cfg.out_dir, 0)
        assert res.pop("best_sha1") == file_sha1(fp.best)
        assert res.pop("run_id") == load_checkpoint(fp.last)["run_id"]
    assert res_a.pop("classes") == res_b.pop("classes")
    assert (res_a.pop("config"), res_b.pop("config")) == (cfg_a.to_dict(), cfg_b.to_dict())  # differ in output_dir only
    assert res_a == pytest.approx(res_b)  # best epoch, epochs run, best value and final scores


# ---------------------------------------------------------------- failures


def test_nan_loss_raises_training_diverged(demo_dir: Path, tmp_path: Path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "optim.lr=1e30", "sched.name=none", "optim.name=sgd")
    with pytest.raises(TrainingDiverged, match=r"at epoch 0, by step [1-9]\d*;") as info:
        train_fold(cfg, 0)
    assert isinstance(info.value, UserError)  # the CLI prints it as one line, exit code 2
    assert "optim.lr" in str(info.value)
    assert not (fold_paths(cfg.out_dir, 0).dir / "done.json").exists()


def test_fold_out_of_range_is_a_user_error(demo_dir: Path, tmp_path: Path, tiny_cfg):
    with pytest.raises(UserError, match="out of range"):
        train_fold(tiny_cfg(demo_dir, tmp_path / "out"), 5)


# ---------------------------------------------------------------- all folds and all data


@pytest.mark.slow
def test_fold_all_writes_cv_report_and_fold_minus_one_has_no_oof(
    demo_dir: Path, tmp_path: Path, capsys, tiny_cfg, overrides_for
):
    out = tmp_path / "out"
    args = ["--config", "configs/demo.yaml",
            *overrides_for(demo_dir, out, *TINY, "data.n_folds=2", "train.limit_batches=2")]
    train.main(["--fold", "all", *args])
    cfg = tiny_cfg(demo_dir, out, "data.n_folds=2")
    df, classes, folds_file = load_or_create_folds(cfg)
    assert folds_file.parent == out / "folds" and "_k2_" in folds_file.name
    assert sorted(df["fold"].unique()) == [0, 1]

    report = json.loads((cfg.out_dir / "cv.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1]
    assert report["n_oof"] == len(df) == 1437
    assert {"accuracy", "f1_macro"} <= set(report["oof"])
    assert 0.0 <= report["oof"]["accuracy"] <= 1.0
    oofs = pd.concat([pd.read_csv(cfg.out_dir / f"fold{k}" / "oof.csv", dtype={"id": str}) for k in (0, 1)])
    assert sorted(oofs["id"]) == sorted(df["id"])
    accuracy = (oofs[[f"prob_{c}" for c in classes]].to_numpy().argmax(1) == oofs["target"].to_numpy()).mean()
    assert report["oof"]["accuracy"] == pytest.approx(accuracy)
    capsys.readouterr()

    train.main(["--fold", "-1", *args])
    assert f"{len(df)} train / 0 valid" in capsys.readouterr().out
    full = cfg.out_dir / "fold-1"
    assert (full / "best.pt").is_file() and (full / "last.pt").is_file() and (full / "done.json").is_file()
    assert not (full / "oof.csv").exists()
    best, last = load_checkpoint(full / "best.pt"), load_checkpoint(full / "last.pt")
    assert best["fold"] == -1 and best["finished"] is True and best["classes"] == classes
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert "val_loss" not in pd.read_csv(full / "history.csv").columns


# ---------------------------------------------------------------- optimizers, schedules, EMA, mixing


@pytest.mark.parametrize(
    "extra",
    [
        *[("optim.name=adamw", f"sched.name={s}") for s in ("cosine", "step", "plateau", "onecycle", "none")],
        *[(f"optim.name={o}", "sched.name=cosine") for o in ("adam", "sgd", "rmsprop")],
    ],
    ids=lambda e: "-".join(x.split("=")[1] for x in e),
)
def test_every_optimizer_and_schedule_runs(demo_dir: Path, tmp_path: Path, extra: tuple[str, str], tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "train.limit_batches=2", *extra)
    result = train_fold(cfg, 0)
    out = fold_paths(cfg.out_dir, 0).dir
    hist = _finite_history(out)
    assert len(hist) == 1 and hist["lr"].iloc[0] > 0
    assert math.isfinite(result["accuracy"])
    if cfg.sched.name == "none":
        assert hist["lr"].iloc[0] == pytest.approx(cfg.optim.lr)
    group = load_checkpoint(out / "last.pt")["train_state"]["optimizer"]["param_groups"][0]
    if cfg.optim.name in ("sgd", "rmsprop"):
        assert group["momentum"] == pytest.approx(cfg.optim.momentum)
    else:
        assert "betas" in group


def test_ema_runs_and_checkpoints_the_averaged_weights(demo_dir: Path, tmp_path: Path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "train.ema=true", "train.ema_decay=0.9", "sched.name=none")
    result = train_fold(cfg, 0)
    _finite_history(fold_paths(cfg.out_dir, 0).dir)
    assert math.isfinite(result["accuracy"])
    ckpt = load_checkpoint(fold_paths(cfg.out_dir, 0).dir / "last.pt")
    assert ckpt["train_state"]["ema"] is not None
    init = _initial_model(cfg, 0).state_dict()
    ema_w, live_w = ckpt["model"]["fc.weight"], ckpt["train_state"]["model"]["fc.weight"]
    assert not torch.allclose(ema_w, live_w)
    # the average lags behind the live weights: it sits between the start and the live weights
    assert (ema_w - init["fc.weight"]).norm() < (live_w - init["fc.weight"]).norm()


@pytest.mark.parametrize("loss", ["ce", "focal"])
def test_mixup_and_cutmix_run(demo_dir: Path, tmp_path: Path, loss: str, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "train.mixup=0.2", "train.cutmix=1.0", f"loss.name={loss}",
                   "loss.smoothing=0.1")
    result = train_fold(cfg, 0)
    hist = _finite_history(fold_paths(cfg.out_dir, 0).dir)
    assert hist["train_loss"].iloc[0] > 0
    assert math.isfinite(result["accuracy"])


# ---------------------------------------------------------------- W&B offline


@pytest.mark.slow
def test_wandb_offline_writes_a_run_directory(demo_dir: Path, tmp_path: Path, monkeypatch, tiny_cfg):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    cfg = tiny_cfg(demo_dir, tmp_path / "out", "wandb.mode=offline", "train.limit_batches=2")
    result = train.run(cfg, 0)  # the command opens the fold's W&B run; train_fold only writes to it
    assert (fold_paths(cfg.out_dir, 0).dir / "done.json").is_file() and result["epochs_run"] == 1
    runs = sorted((cfg.out_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((cfg.out_dir / "wandb").iterdir()) if (cfg.out_dir / "wandb").exists() else None
    files = list(runs[0].glob("*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


# ---------------------------------------------------------------- --dry-run


@pytest.mark.slow  # a fresh interpreter importing torch and timm: 8-20 s
def test_dry_run_cli_builds_everything_and_writes_nothing(demo_dir: Path, tmp_path: Path, tiny_cfg, overrides_for):
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", "--config", "configs/demo.yaml", "--fold", "0", "--dry-run",
         *overrides_for(demo_dir, out, *TINY, f"model.freeze_before={FREEZE_AT}", "data.check_images=true")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = build_model(tiny_cfg(demo_dir, out).model, 10)
    freeze(model, before=FREEZE_AT)
    c = param_counts(model)
    assert 0 < c["frozen"] < c["total"]
    assert f"parameters {c['total']:,} total, {c['trainable']:,} trainable, {c['frozen']:,} frozen" in proc.stdout
    assert "dry run: input (4, 3, 32, 32) -> logits (4, 10)" in proc.stdout
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no split, image check, cached image or checkpoint
    assert "would be written by a real run" in proc.stdout


def test_resume_refuses_a_config_that_changes_the_run(demo_dir, tmp_path, tiny_cfg):
    class Stop(Exception):
        pass

    def stop(epoch, value):
        raise Stop

    cfg = tiny_cfg(demo_dir, tmp_path, "train.epochs=2")
    with pytest.raises(Stop):
        train_fold(cfg, 0, on_epoch=stop)
    before = (tmp_path / "demo" / "fold0" / "last.pt").read_bytes()
    with pytest.raises(UserError, match=r"train\.epochs"):
        train_fold(tiny_cfg(demo_dir, tmp_path, "train.epochs=5"), 0, resume=True)
    assert (tmp_path / "demo" / "fold0" / "last.pt").read_bytes() == before
    # Workers and W&B settings may change.
    train_fold(tiny_cfg(demo_dir, tmp_path, "train.epochs=2", "loader.num_workers=1"), 0, resume=True)
    assert (tmp_path / "demo" / "fold0" / "done.json").is_file()
