"""torchrun: DistributedDataParallel training and inference on 2 CPU processes (gloo), checked
against one process; the training sampler's shares and the inference shards.

The model trains only its head (model.freeze_before=fc), so every BatchNorm stays in eval mode and
2 processes x 16 images are the same computation as 1 process x 32: any sample dealt to the wrong
rank, seeded differently or left out shows up in the losses and weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

import src.train as train
from src.core.config import load_config
from src.core.distributed import EpochSampler, ShardedEpochSampler, shard_range
from src.core.utils import UserError
from src.data.folds import load_or_create_folds
from src.ensembling import pipeline
from src.runs.checkpoint import load_checkpoint
from src.runs.layout import fold_paths

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Two short epochs of the head only; 16 images per process (TINY), 32 for the single process.
RUN = (*TINY, "train.epochs=2", "model.freeze_before=fc", "sched.warmup_epochs=0", "runtime.device=cpu")


# ---------------------------------------------------------------- the shares, without processes


@pytest.mark.parametrize("n,world,batch", [(100, 2, 16), (101, 3, 8), (7, 2, 4), (64, 4, 16)])
def test_ranks_together_see_the_batches_of_one_process_with_a_world_times_larger_batch(n, world, batch):
    for epoch in (0, 3):
        single = EpochSampler(n, seed=5)
        single.set_epoch(epoch)
        one = list(single)
        shares = []
        for r in range(world):
            s = ShardedEpochSampler(n, seed=5, rank=r, world=world)
            s.set_epoch(epoch)
            shares.append(list(s))
            assert len(shares[-1]) == len(s) == n // world  # every rank runs as many steps
        steps = (n // world) // batch
        for t in range(steps):  # batch t of all ranks == batch t of one process with world x batch
            together = sorted(x for share in shares for x in share[t * batch:(t + 1) * batch])
            assert together == sorted(one[t * world * batch:(t + 1) * world * batch]), (epoch, t)
        # over the epoch: the same (index, augmentation seed) pairs, each once, only the n % world tail left out
        dealt = [x for share in shares for x in share]
        assert sorted(dealt) == sorted(one[:world * (n // world)])
        assert len(set(i for i, _ in dealt)) == len(dealt)


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 360, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_inference_shards_are_in_order_and_cut_at_whole_batches(n, world):
    batch = 16
    shares = [shard_range(n, batch, r, world) for r in range(world)]
    assert [i for s in shares for i in s] == list(range(n))
    if -(-n // batch) >= world:  # enough batches: every rank predicts whole batches of one process
        assert all(len(s) > 0 and s.start % batch == 0 for s in shares)


# ---------------------------------------------------------------- training under torchrun


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_DIR": str(tmp / "wandb_env"),
            "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}


def _torchrun(args: list[str], tmp: Path, check: bool = True) -> subprocess.CompletedProcess:
    (tmp / "wandb_env").mkdir(exist_ok=True)
    proc = subprocess.run([*TORCHRUN, *args], cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "wandb" not in p.parts}


@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory, overrides_for):
    """Fold 0 trained by one process (batch 32, uninterrupted), and by torchrun with 2 processes
    (16 each) interrupted after epoch 0 (a copy of that state in `interrupted/`), then resumed
    with src.train --resume (W&B offline)."""
    tmp = tmp_path_factory.mktemp("ddp")
    ov = {name: overrides_for(demo_dir, tmp / name, *RUN) for name in ("one", "ddp")}
    train.run(load_config(CONFIG, [*ov["one"], "loader.batch_size=32"]), 0)
    ddp = _torchrun([str(REPO / "tests" / "core" / "ddp_interrupted.py"), str(CONFIG), str(tmp / "interrupted"), *ov["ddp"]], tmp)
    return {"tmp": tmp, "ddp": ddp}


def _fold(runs, name: str):
    return fold_paths(runs["tmp"] / name / "demo", 0)


@pytest.mark.slow
def test_ddp_writes_what_one_process_writes_and_prints_once(runs):
    assert _files(runs["tmp"] / "ddp") == _files(runs["tmp"] / "one")
    out = runs["ddp"].stdout
    assert out.count("distributed: 2 processes, backend gloo") == 1
    assert out.count("epoch 1 ") == 1  # rank 1 prints nothing
    assert "effective batch size 32 (2 processes x 16 x 1 accumulation steps); learning rate 0.005" in out


@pytest.mark.slow
def test_ddp_oof_holds_every_validation_id_once_in_order(runs, demo_dir, demo_cfg):
    table, _, _ = load_or_create_folds(demo_cfg(demo_dir, runs["tmp"] / "one"), create=False)
    val_ids = table.loc[table["fold"] == 0, "id"].tolist()
    ddp = pd.read_csv(_fold(runs, "ddp").oof, dtype={"id": str, "label": str})
    one = pd.read_csv(_fold(runs, "one").oof, dtype={"id": str, "label": str})
    assert ddp["id"].tolist() == one["id"].tolist() == val_ids  # each exactly once, in the fold's order
    assert list(ddp.columns) == list(one.columns)
    for col in ("fold", "label", "target", "epoch"):
        assert ddp[col].tolist() == one[col].tolist(), col
    probs = [c for c in one.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ddp[probs].to_numpy(), one[probs].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_ddp_run_stops_unfinished_and_resumes_on_as_many_processes(runs, demo_dir, overrides_for):
    tmp = runs["tmp"]
    assert runs["ddp"].stderr.count("interrupted") >= 2  # both ranks
    stopped = fold_paths(tmp / "interrupted" / "demo", 0)
    assert load_checkpoint(stopped.last)["epoch"] == 0 and not stopped.done.exists()
    assert {"best.pt", "last.pt", "oof.csv"} <= {p.name for p in stopped.dir.iterdir()}
    before = _files(tmp / "interrupted")
    with pytest.raises(UserError, match="trained on 2 process.* this one on 1"):  # another effective batch size
        train.run(load_config(CONFIG, overrides_for(demo_dir, tmp / "interrupted", *RUN)), 0, resume=True)
    assert _files(tmp / "interrupted") == before
    assert "resuming after epoch 0" in runs["ddp"].stdout


@pytest.mark.slow
def test_resumed_ddp_run_equals_one_uninterrupted_process_with_the_whole_batch(runs):
    """Resumed after epoch 0 on 2 processes x 16 == uninterrupted on 1 process x 32, epoch by
    epoch (float tolerance: the sums are split differently); a sample dealt twice, left out or
    augmented with another seed, before or after the resume, moves these by far more."""
    ddp, one = (pd.read_csv(_fold(runs, n).history) for n in ("ddp", "one"))
    assert ddp["epoch"].tolist() == one["epoch"].tolist() == [0, 1]
    for col in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_f1_macro"):
        np.testing.assert_allclose(ddp[col], one[col], rtol=1e-4, atol=1e-5, err_msg=col)
    a, b = (load_checkpoint(_fold(runs, n).last) for n in ("ddp", "one"))
    assert a["epoch"] == b["epoch"] == 1
    assert [k for k in a["model"] if not torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5)] == []


@pytest.mark.slow
def test_ddp_opens_exactly_one_wandb_run(runs):
    inside = sorted((runs["tmp"] / "ddp" / "demo" / "wandb").glob("offline-run-*"))
    assert len(inside) == 1, inside
    assert list((runs["tmp"] / "wandb_env").rglob("offline-run-*")) == []  # no stray run from rank 1


# ---------------------------------------------------------------- the ensemble under torchrun


@pytest.mark.slow
def test_ddp_ensemble_writes_the_single_process_submission(runs, demo_dir, overrides_for):
    """One process predicts everything; torchrun's 2 processes find the test predictions cached
    (copied from the single run) and predict the TTA-OOF pass in 2 shards. Submission, probabilities
    and cached logits must be the same bytes."""
    tmp = runs["tmp"]
    for name in ("ens_one", "ens_ddp"):
        shutil.copytree(tmp / "ddp" / "demo", tmp / name / "demo", ignore=shutil.ignore_patterns("wandb", "preds"))
        shutil.copytree(tmp / "ddp" / "folds", tmp / name / "folds")
    extra = ("ensemble.missing_folds=warn", "loader.batch_size=16", "loader.num_workers=0", "runtime.device=cpu",
             "ensemble.tta=[identity,zoom0.95,zoom1.05]")  # fixed views: 3 of each split
    one = pipeline.run(load_config(CONFIG, overrides_for(demo_dir, tmp / "ens_one", *extra)), out=tmp / "one.csv")
    preds_one = tmp / "ens_one" / "demo" / "preds" / "fold0"
    cached = sorted(p.name for p in preds_one.glob("*.npy"))
    assert len(cached) == 6  # test and oof x 3 views
    (tmp / "ens_ddp" / "demo" / "preds" / "fold0").mkdir(parents=True)
    for name in cached:
        if name.startswith("test-"):
            shutil.copy(preds_one / name, tmp / "ens_ddp" / "demo" / "preds" / "fold0" / name)

    proc = _torchrun(["-m", "src.ensemble", "--config", str(CONFIG), "--out", str(tmp / "ddp.csv"),
                      *overrides_for(demo_dir, tmp / "ens_ddp", *extra)], tmp)
    assert proc.stdout.count("predictions (fold x view x split): 3 computed, 3 read") == 1, proc.stdout
    assert (tmp / "ddp.csv").read_bytes() == one.read_bytes()
    assert (tmp / "ddp_probs.csv").read_bytes() == (tmp / "one_probs.csv").read_bytes()
    preds_ddp = tmp / "ens_ddp" / "demo" / "preds" / "fold0"
    assert sorted(p.name for p in preds_ddp.glob("*.npy")) == cached
    for name in cached:
        assert np.array_equal(np.load(preds_ddp / name), np.load(preds_one / name)), name


# ---------------------------------------------------------------- every task under torchrun


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["multilabel", "ordinal"])
def test_ddp_trains_multilabel_and_ordinal_folds_as_one_process_does(kind, tmp_path):
    """Multi-hot targets (N, L) and a regression head's one-column outputs gathered across 2
    processes x 16: the OOF predictions and losses of 1 process x 32, to float tolerance (RUN freezes
    the backbone, so no BatchNorm statistic depends on the per-process batch)."""
    from src.demo import build_multilabel_demo, build_ordinal_demo

    build = build_multilabel_demo if kind == "multilabel" else build_ordinal_demo
    comp = build(tmp_path / f"digits_{kind}", n_train=160, n_test=8)
    config = REPO / "configs" / f"demo_{kind}.yaml"
    ov = [*RUN, "train.limit_batches=null", "train.min_steps=0", "data.n_folds=2", f"data.dir={comp}", "wandb.mode=disabled",
          "sched.name=none"]
    train.run(load_config(config, [*ov, f"experiment.output_dir={tmp_path / 'one'}", "loader.batch_size=32"]), 0)
    _torchrun(["-m", "src.train", "--config", str(config), "--fold", "0", *ov,
               f"experiment.output_dir={tmp_path / 'ddp'}"], tmp_path)
    name = f"demo_{kind}"
    one, ddp = (pd.read_csv(fold_paths(tmp_path / d / name, 0).oof, dtype={"id": str, "label": str},
                            keep_default_na=False) for d in ("one", "ddp"))
    assert ddp["id"].tolist() == one["id"].tolist() and ddp["label"].tolist() == one["label"].tolist()
    probs = [c for c in one.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ddp[probs].to_numpy(), one[probs].to_numpy(), atol=1e-4)
    h1, h2 = (pd.read_csv(fold_paths(tmp_path / d / name, 0).history) for d in ("one", "ddp"))
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=1e-4)
    # done.json records the process count, and a new fold of this experiment on another count is refused
    assert json.loads(fold_paths(tmp_path / "ddp" / name, 0).done.read_text())["processes"] == 2
    with pytest.raises(UserError, match=r"processes \(2 there, 1 here\)"):
        train.run(load_config(config, [*ov, f"experiment.output_dir={tmp_path / 'ddp'}"]), 1)
    assert not fold_paths(tmp_path / "ddp" / name, 1).dir.exists()
