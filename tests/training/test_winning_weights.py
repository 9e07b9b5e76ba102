"""Weight averaging and progressive resizing on the demo: SWA over the last epochs, the K best
checkpoints kept and averaged (src.average), both scored on OOF; training sizes that follow
aug.size_schedule, also across a resume.

One experiment `w` (2 folds, 4 tiny epochs, SWA of the last 2, every epoch kept, sizes 16 then
32 px) is trained for real on the session's digits demo.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import timm
import torch

import src.training.trainer as trainer
from src.core.runtime import Runtime, predict
from src.core.utils import UserError, softmax
from src.data.folds import fold_tables
from src.data.loaders import ImageDataset, make_loader
from src.data.tables import prob_columns
from src.data.transforms import build_transform, resolve_norm
from src.runs.checkpoint import CheckpointKeeper, load_checkpoint
from src.runs.layout import fold_paths, read_oof
from src.runs.members import member_oof_views, open_member
from src.training.averaged_experiment import average_experiment
from src.training.size_schedule import size_at
from src.training.weight_averaging import average_state_dicts

CLASSES = [str(i) for i in range(10)]
RECIPE = ("data.n_folds=2", "model.name=test_resnet", "train.epochs=4", "train.limit_batches=3",
          "sched.warmup_epochs=0", "optim.lr=0.01", "loader.batch_size=32", "loader.num_workers=0",
          "data.check_images=false", "runtime.device=cpu", "train.swa=true", "train.swa_epochs=2",
          "train.keep_top=4", "aug.size_schedule=[[0,16],[2,32]]")


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_dir, demo_cfg) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("winweights")
    out = root / "out"
    cfg = demo_cfg(demo_dir, out, "experiment.name=w", *RECIPE)
    trainer_sizes: list[list[int]] = []  # per model built: the input size of every training forward
    mp = pytest.MonkeyPatch()
    build = trainer.build_model

    def recording_build(*args, **kwargs):  # the real model, with a hook that records training inputs
        model, sizes = build(*args, **kwargs), []
        trainer_sizes.append(sizes)
        model.register_forward_pre_hook(lambda mod, inp: sizes.append(inp[0].shape[-1]) if mod.training else None)
        return model

    mp.setattr(trainer, "build_model", recording_build)
    try:
        for k in range(2):
            trainer.train_fold(cfg, k)
    finally:
        mp.undo()
    report = trainer.cv_report(cfg, [0, 1])
    return SimpleNamespace(root=root, demo=demo_dir, out=out, cfg=cfg, sizes=trainer_sizes, report=report,
                           make=lambda *extra: demo_cfg(demo_dir, out, *RECIPE, *extra))


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


# ---------------------------------------------------------------- progressive resizing


def test_size_at_follows_the_schedule():
    sched = [(0, 160), (4, 224), (8, 288)]
    assert [size_at(sched, e) for e in range(10)] == [160] * 4 + [224] * 4 + [288] * 2
    assert size_at(None, 3) is None


def test_training_inputs_follow_the_schedule_and_validation_runs_at_the_final_size(world):
    hist = pd.read_csv(fold_paths(world.cfg.out_dir, 0).history)
    assert hist["img_size"].tolist() == [16, 16, 32, 32]
    # every training forward of fold 0's model (3 batches an epoch), then BatchNorm recomputed for SWA at 32 px
    first = world.sizes[0]
    assert first[:12] == [16] * 6 + [32] * 6, first
    assert set(first[12:]) == {32}
    oof = read_oof(fold_paths(world.cfg.out_dir, 0).oof, CLASSES)  # validation: the final size, checked below
    assert len(oof) > 0


def test_a_bad_schedule_is_refused(world, demo_cfg):
    for bad, msg in (("[[1,16],[2,32]]", "start at epoch 0"), ("[[0,16],[2,24]]", "ends at 24")):
        with pytest.raises(UserError, match=msg):
            world.make(f"aug.size_schedule={bad}")


@pytest.mark.slow
def test_resume_with_schedule_swa_and_top_k_matches_an_uninterrupted_run(world, demo_cfg):
    cfg = demo_cfg(world.demo, world.root / "resumed", "experiment.name=w", *RECIPE)

    def crash(epoch: int, value: float) -> None:
        if epoch == 2:  # after the size changed and the SWA average began
            raise _Interrupt

    with pytest.raises(_Interrupt):
        trainer.train_fold(cfg, 0, on_epoch=crash)
    trainer.train_fold(cfg, 0, resume=True)
    a, b = fold_paths(world.cfg.out_dir, 0), fold_paths(cfg.out_dir, 0)
    assert pd.read_csv(b.history)["img_size"].tolist() == [16, 16, 32, 32]
    for name in ("last.pt", "swa.pt"):
        sa, sb = load_checkpoint(a.dir / name)["model"], load_checkpoint(b.dir / name)["model"]
        bad = [k for k in sa if not torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5)]
        assert bad == [], name
    assert load_checkpoint(a.last)["top"] == load_checkpoint(b.last)["top"]
    pd.testing.assert_frame_equal(pd.read_csv(a.dir / "swa_oof.csv").drop(columns="run_id"),
                                  pd.read_csv(b.dir / "swa_oof.csv").drop(columns="run_id"), atol=1e-5)


# ---------------------------------------------------------------- SWA


def test_swa_averages_the_last_epochs_and_its_oof_is_scored(world):
    fp = fold_paths(world.cfg.out_dir, 0)
    swa = load_checkpoint(fp.dir / "swa.pt")
    tops = {e: load_checkpoint(fp.dir / "top" / f"epoch{e:03d}.pt")["model"] for e in range(4)}
    assert swa["swa_epochs"] == 2
    mean = average_state_dicts([tops[2], tops[3]])
    for k, v in _params(swa["model"]).items():  # the weights: the mean of epochs 2 and 3
        torch.testing.assert_close(v, mean[k], atol=1e-6, rtol=1e-5)
    bn = [k for k in swa["model"] if k.endswith("running_mean")]
    assert bn and any(not torch.allclose(swa["model"][k], mean[k]) for k in bn)  # BatchNorm recomputed
    # swa_oof.csv: the SWA weights' own predictions of the fold's validation images, at 32 px
    oof = read_oof(fp.dir / "swa_oof.csv", CLASSES)
    _, val, _ = fold_tables(world.cfg, 0)
    assert oof["id"].tolist() == val["id"].tolist()
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    model.load_state_dict(swa["model"])
    mean, std = resolve_norm(world.cfg.aug, None)
    loader = make_loader(ImageDataset(val["path"], None, build_transform(world.cfg.aug, False, mean, std)),
                         world.cfg.loader)
    logits = predict([model], loader, Runtime.from_cfg(world.cfg.runtime))[0, 0]
    assert next(iter(loader))[0].shape[-1] == 32
    np.testing.assert_allclose(oof[prob_columns(CLASSES)].to_numpy(), softmax(logits), atol=1e-5)
    done = trainer.read_done(fp)
    assert done["swa"]["accuracy"] == pytest.approx(float((softmax(logits).argmax(1) == val["target"]).mean()))
    assert set(world.report["oof_swa"]) >= {"accuracy", "f1_macro"}


# ---------------------------------------------------------------- top-K checkpoints


def test_keeper_keeps_exactly_the_k_best_epochs(tmp_path):
    class Fold:  # what the keeper needs of a fold: its weights and training state
        eval_model = torch.nn.Linear(2, 2)

        def train_state(self):
            return {}

    keeper = CheckpointKeeper(tmp_path / "best.pt", tmp_path / "last.pt", {"config": {}, "run_id": "r"}, "accuracy",
                              lambda new, best: best is None or new > best, None, top_k=2)
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.9, float("nan"), 0.65]):
        keeper.history.append({"epoch": epoch, "val_accuracy": value})
        keeper.observe(epoch, value)
        keeper.save(Fold(), epoch, False)
    assert keeper.top == [[0.9, 3], [0.7, 1]]
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == ["epoch001.pt", "epoch003.pt"]
    assert load_checkpoint(tmp_path / "top" / "epoch003.pt")["metric"] == 0.9


def test_keeper_serialises_once_and_links_best_and_top(tmp_path):
    """best.pt and the top-K file of an improving epoch are the bytes of last.pt, written once (one
    inode); a later epoch replaces last.pt and leaves them holding the epoch they recorded."""
    class Fold:
        eval_model = torch.nn.Linear(2, 2)

        def train_state(self):
            return {}

    keeper = CheckpointKeeper(tmp_path / "best.pt", tmp_path / "last.pt", {"config": {}, "run_id": "r"}, "accuracy",
                              lambda new, best: best is None or new > best, None, top_k=2)
    inode = lambda p: p.stat().st_ino  # noqa: E731
    for epoch, value in enumerate([0.5, 0.9, 0.6]):
        Fold.eval_model.weight.data.fill_(float(epoch))
        keeper.history.append({"epoch": epoch, "val_accuracy": value})
        improved = keeper.observe(epoch, value)
        keeper.save(Fold(), epoch, improved)
        last = tmp_path / "last.pt"
        if improved:
            assert inode(tmp_path / "best.pt") == inode(last)
        assert inode(keeper.top_path(epoch)) == inode(last)  # each of the three epochs entered the top 2
    assert inode(tmp_path / "best.pt") != inode(tmp_path / "last.pt")
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 1 and float(best["model"]["weight"][0, 0]) == 1.0
    assert last["epoch"] == 2 and float(last["model"]["weight"][0, 0]) == 2.0 and last["top"] == [[0.9, 1], [0.6, 2]]
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == ["epoch001.pt", "epoch002.pt"]
    keeper.finish(Fold(), keep_last_as_best=True)
    assert inode(tmp_path / "best.pt") == inode(tmp_path / "last.pt") and load_checkpoint(tmp_path / "best.pt")["finished"]


def test_average_top_k_writes_a_scored_experiment_beside_the_original(world, capsys):
    report = average_experiment(world.cfg, "w", top=2)
    text = capsys.readouterr().out
    assert "w_top2: each fold's top 2 checkpoints averaged against w's best.pt" in text
    m = open_member("w_top2", str(world.out), "error", str(world.demo))  # a member the ensemble can blend
    rt = Runtime.from_cfg(world.cfg.runtime)
    table, logits = member_oof_views(m, ["identity"], rt, world.cfg.loader)
    for k in (0, 1):
        fp = fold_paths(world.out / "w_top2", k)
        hist = pd.read_csv(fold_paths(world.cfg.out_dir, k).history)
        best2 = hist.sort_values("val_accuracy", ascending=False, kind="stable")["val_accuracy"].iloc[:2]
        ckpt = load_checkpoint(fp.best)
        chosen = sorted(ckpt["averaged_epochs"])
        assert sorted(hist.loc[hist["epoch"].isin(chosen), "val_accuracy"]) == sorted(best2)
        tops = [load_checkpoint(fold_paths(world.cfg.out_dir, k).dir / "top" / f"epoch{e:03d}.pt")["model"]
                for e in chosen]
        mean = average_state_dicts(tops)
        for key, v in _params(ckpt["model"]).items():
            torch.testing.assert_close(v, mean[key], atol=1e-6, rtol=1e-5)
        # its oof.csv holds the averaged model's own predictions of the fold's validation images
        oof = read_oof(fp.oof, CLASSES)
        np.testing.assert_allclose(oof[prob_columns(CLASSES)].to_numpy(), softmax(logits[k][0]), atol=1e-5)
        assert oof["id"].tolist() == read_oof(fold_paths(world.cfg.out_dir, k).oof, CLASSES)["id"].tolist()
    assert 0.0 <= report["oof"]["accuracy"] <= 1.0 and Path(world.out / "w_top2" / "cv.json").is_file()


def test_average_swa_packs_the_swa_models_and_too_many_top_is_refused(world, capsys):
    average_experiment(world.cfg, "w", swa=True)
    for k in (0, 1):
        packed = read_oof(fold_paths(world.out / "w_swa", k).oof, CLASSES)
        swa = read_oof(fold_paths(world.cfg.out_dir, k).dir / "swa_oof.csv", CLASSES)
        np.testing.assert_allclose(packed[prob_columns(CLASSES)].to_numpy(), swa[prob_columns(CLASSES)].to_numpy())
    with pytest.raises(UserError, match="fewer than --top 5"):
        average_experiment(world.cfg, "w", top=5)
