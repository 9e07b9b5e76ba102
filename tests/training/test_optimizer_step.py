"""The one optimizer step (src.models.optim.LossScaler, timm's NativeScaler): it clips the gradient
norm, steps only when an accumulation window completes, and zeroes the gradients after; the
training loop, the learning-rate finder and both benchmarks take their steps through it; and the
fold's one snapshot (FoldState.snapshot) puts back everything an epoch changes."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from src.analysis.bench_stages import make_photos, stage_timm
from src.analysis.model_bench import bench
from src.core.runtime import Runtime
from src.models.optim import LossScaler
from src.training.engine import train_one_epoch
from src.training.lr_finder import sweep
from src.training.trainer import optimization, setup_fold

MAX_NORM = 0.05


def _model_and_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)  # convolutions and BatchNorm
    return model.train(), torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])


def _loss(model, x, y) -> torch.Tensor:
    return 100 * torch.nn.functional.cross_entropy(model(x), y)  # large gradients, far past MAX_NORM


def _grad_norm(opt: torch.optim.Optimizer) -> float:
    """The total gradient norm over the optimizer's parameters: what it steps with."""
    grads = [p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads)))


@pytest.mark.parametrize("enabled", [False, True], ids=["no-scaler", "grad-scaler"])
def test_the_step_clips_the_gradient_norm_before_stepping(enabled):
    """The norm the optimizer steps with is at most clip_grad, with the grad scaler on too
    (its scaled gradients are unscaled before the clip)."""
    seen = {}
    for clip in (None, MAX_NORM):
        model, x, y = _model_and_batch()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.register_step_pre_hook(lambda o, args, kwargs, clip=clip: seen.__setitem__(clip, _grad_norm(o)))
        LossScaler("cpu", enabled=enabled)(_loss(model, x, y), opt, clip_grad=clip, parameters=model.parameters())
    assert seen[None] > 10 * MAX_NORM  # unclipped, the step would see this
    assert seen[MAX_NORM] <= MAX_NORM * (1 + 1e-5)
    assert bool(LossScaler("cpu", enabled=enabled).state_dict()) == enabled  # an off scaler checkpoints as {}


def test_the_step_waits_for_the_accumulation_window_then_steps_and_zeroes_the_gradients():
    model, x, y = _model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    opt.register_step_pre_hook(lambda o, args, kwargs: steps.append(1))
    step = LossScaler("cpu", enabled=False)
    w0 = copy.deepcopy(model.state_dict())

    step(_loss(model, x, y) / 3, opt, need_update=False)
    g1 = [p.grad.clone() for p in model.parameters()]
    step(_loss(model, x, y) / 3, opt, need_update=False)
    assert not steps
    assert all(torch.equal(w0[k], v) for k, v in model.named_parameters())  # no step inside the window
    for g, p in zip(g1, model.parameters()):
        assert torch.allclose(p.grad, 2 * g, rtol=1e-5, atol=1e-7)  # the window's gradients add up

    step(_loss(model, x, y) / 3, opt, need_update=True)
    assert len(steps) == 1
    assert any(not torch.equal(w0[k], v) for k, v in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture
def counted(monkeypatch) -> list[bool]:
    """Each LossScaler call's need_update, in order, while the real step still runs."""
    calls: list[bool] = []
    real = LossScaler.__call__

    def call(self, loss, optimizer, *args, need_update=True, **kwargs):
        calls.append(need_update)
        return real(self, loss, optimizer, *args, need_update=need_update, **kwargs)

    monkeypatch.setattr(LossScaler, "__call__", call)
    return calls


def test_the_training_loop_and_the_lr_finder_step_through_it(demo_dir, tmp_path, tiny_cfg, counted):
    """Three batches with two accumulated: two updates (the last window is short); a sweep of ten
    steps: twenty backward passes, ten updates."""
    cfg = tiny_cfg(demo_dir, tmp_path, "train.accum_steps=2", "train.clip_grad=1.0")
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    optimization(s)
    train_one_epoch(s, 0)
    assert counted == [False, True, True] and s.num_updates == 2
    counted.clear()
    sweep(s, 1e-5, 1.0, 10)
    assert counted == [False, True] * 10


def test_both_benchmarks_step_through_it(demo_dir, demo_cfg, tmp_path, counted):
    cfg = demo_cfg(demo_dir, tmp_path, "model.name=test_resnet", "aug.img_size=32", "loader.batch_size=4",
                   "loader.num_workers=0")
    bench(cfg, steps=1, warmup=1, n_classes=10)
    assert counted == [True, True]
    counted.clear()
    photos = make_photos(tmp_path / "photos", 20)
    cfg = demo_cfg(photos, tmp_path, "data.layout=imagefolder", "data.n_folds=5", "data.check_images=false",
                   "model.name=test_resnet", "model.pretrained=false", "aug.img_size=32", "loader.batch_size=4",
                   "loader.num_workers=0")
    stage_timm(cfg, Runtime.from_cfg(cfg.runtime), photos / "train", batches=1)
    assert counted == [True, True]  # a warm-up epoch and a timed one


def test_the_snapshot_puts_back_what_an_epoch_changed(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path, "train.ema=true")
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    optimization(s)
    before = s.snapshot()
    train_one_epoch(s, 0)
    assert s.num_updates == 3
    s.restore(before)
    after = s.train_state()
    assert after["num_updates"] == 0 and after["scheduler"] == before["scheduler"]
    assert after["optimizer"]["state"] == {}  # the moments the epoch built are gone
    for part in ("model", "ema"):  # weights and BatchNorm buffers, live and averaged
        assert all(torch.equal(before[part][k], v) for k, v in after[part].items()), part
    assert all(p.grad is None for p in s.model.parameters())
