"""The fine-tuning controls: layer-wise lr decay (every group's rate at every step, with freezing,
unfreezing and the backbone multiplier), drop path, gradient checkpointing (the same forward and
backward as without it), warmup in steps, and the step budget (train.min_steps)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from src.core.config import CONFIG_DIR, load_config
from src.core.runtime import Runtime
from src.core.utils import UserError, seed_everything
from src.demo import build_demo
from src.models.model import build_model, freeze, param_groups
from src.models.optim import build_optimizer, build_scheduler
from src.runs.checkpoint import load_checkpoint
from src.training.trainer import fold_epochs, optimization, setup_fold, train_fold

DEPTH = 6  # timm's test_vit: patch embedding, 6 blocks, norm, head


def _vit_layer(name: str) -> int:
    """test_vit's layer id, written out: embeddings 0, block i -> i + 1, the final norm with the
    last block, the head last (BEiT's convention, which timm's group_matcher follows)."""
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token")):
        return 0
    if m := re.match(r"blocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    if name.startswith("norm."):
        return DEPTH
    assert name.startswith("head."), name
    return DEPTH + 1


def _vit(**model):
    cfg = load_config(CONFIG_DIR / "base.yaml", ["model.name=test_vit", "model.pretrained=false", "aug.img_size=32",
                                 *(f"model.{k}={v}" for k, v in model.items())])
    return cfg, build_model(cfg.model, 5, img_size=32)


def test_layer_decay_scales_every_parameter_by_its_depth_below_the_head():
    _, model = _vit()
    groups = param_groups(model, 0.05, freeze(model), 0.1, include_frozen=False, layer_decay=0.5, name="test_vit")
    seen = {}
    for g in groups:
        for p in g["params"]:
            seen[id(p)] = (g.get("lr_scale", 1.0), g["weight_decay"])
    assert len(seen) == len(list(model.parameters()))
    for n, p in model.named_parameters():
        scale, wd = seen[id(p)]
        assert scale == pytest.approx(0.5 ** (DEPTH + 1 - _vit_layer(n)), rel=1e-12), n
        # No decay on 1-D parameters and on what the model names in no_weight_decay (pos_embed, cls_token).
        assert wd == (0.0 if p.ndim <= 1 or n in ("pos_embed", "cls_token") else 0.05), n


def test_a_model_without_layers_is_refused_for_layer_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    model.pretrained_cfg = {}
    with pytest.raises(UserError, match="no layer grouping .* optim.layer_decay"):
        param_groups(model, 0.0, freeze(model), 1.0, False, layer_decay=0.7, name="a plain Sequential")


LR, MULT, DECAY, UPE, EPOCHS, WARMUP = 1e-2, 0.1, 0.7, 3, 4, 5
MIN_LR, WARMUP_LR = 1e-4, 1e-6


def _cosine(t: int) -> float:
    if t < WARMUP:
        return WARMUP_LR + t * (LR - WARMUP_LR) / WARMUP
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t / (EPOCHS * UPE)))


@pytest.mark.parametrize("sched", ["cosine", "step"])
def test_every_group_at_every_step_with_layer_decay_freezing_and_warmup_steps(sched):
    """Freeze the stem and 2 blocks (to be unfrozen), layer decay 0.7, a warmup of 5 steps (not a whole
    number of epochs): each group runs at schedule(t) x 0.7^depth x (0.1 if it was frozen) at every
    step. timm's schedules apply lr_scale themselves, so a doubly applied scale shows at once."""
    cfg, model = _vit(freeze_stages=3, unfreeze_epoch=1)
    cfg = load_config(overrides=[f"sched.name={sched}", f"sched.warmup_steps={WARMUP}", "sched.step_epochs=1",
                                 "sched.decay_rate=0.5", f"sched.min_lr={MIN_LR}", f"sched.warmup_lr={WARMUP_LR}",
                                 f"optim.lr={LR}", "optim.name=sgd"])
    frozen = freeze(model, stages=3)
    frozen_names = set(frozen.params)
    assert frozen_names and any(n.startswith("blocks.1.") for n in frozen_names)
    groups = param_groups(model, 0.0, frozen, MULT, include_frozen=True, layer_decay=DECAY, name="test_vit")
    opt = build_optimizer(cfg.optim, groups)
    schedule = build_scheduler(cfg.sched, opt, LR, EPOCHS, UPE, higher_is_better=True)
    names = {id(p): n for n, p in model.named_parameters()}
    expected_scale = []
    for g in opt.param_groups:
        scales = {DECAY ** (DEPTH + 1 - _vit_layer(names[id(p)])) * (MULT if names[id(p)] in frozen_names else 1.0)
                  for p in g["params"]}
        assert len(scales) == 1, "a group mixes rates"
        expected_scale.append(scales.pop())
    assert len(set(np.round(expected_scale, 12))) >= 8  # every depth and both kinds are really there
    for t in range(EPOCHS * UPE):
        head = _cosine(t) if sched == "cosine" else (
            WARMUP_LR + t * (LR - WARMUP_LR) / WARMUP if t < WARMUP else LR * 0.5 ** (t // UPE))
        for g, scale in zip(opt.param_groups, expected_scale):
            assert g["lr"] == pytest.approx(head * scale, rel=1e-9), (t, scale)
        opt.step()
        schedule.step_update(num_updates=t + 1)


@pytest.mark.filterwarnings("ignore:.*frozen at their random initialization")
def test_a_trained_fold_keeps_layer_decay_and_the_backbone_multiplier_in_its_optimizer(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path, "model.name=test_vit", "model.freeze_stages=2", "model.unfreeze_epoch=1",
                   "optim.layer_decay=0.8", "model.backbone_lr_mult=0.5", "sched.name=none", "optim.lr=1e-3",
                   "train.epochs=2", "train.limit_batches=2")
    train_fold(cfg, 0)
    groups = load_checkpoint(tmp_path / "demo" / "fold0" / "last.pt")["train_state"]["optimizer"]["param_groups"]
    rates = sorted({round(g["lr"] / 1e-3, 9) for g in groups})
    frozen_depths = {0, 1}  # the stem (patch embedding) and block 0: freeze_stages=2
    want = sorted({round(0.8 ** (DEPTH + 1 - d) * (0.5 if d in frozen_depths else 1.0), 9) for d in range(DEPTH + 2)})
    assert rates == want


def _grads(cfg, checkpointing: bool, x, y):
    """The loss and every parameter's gradient of one train-mode step of the model setup_fold builds."""
    seed_everything(0)
    model = build_model(cfg.model, 10, img_size=32)
    if checkpointing:
        model.set_grad_checkpointing(True)
    freeze(model, stages=cfg.model.freeze_stages)
    model.train()
    calls = []
    modules = dict(model.named_modules())
    block = next(modules[k] for k in ("layer2.0", "blocks.1", "stages.1.blocks.0") if k in modules)  # one checkpointed block
    forward = block.forward

    def counted(*args, **kwargs):  # forward hooks do not fire in checkpointing's recomputation; this does
        calls.append(1)
        return forward(*args, **kwargs)

    block.forward = counted
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.filterwarnings("ignore:.*frozen at their random initialization")
@pytest.mark.parametrize("name,frozen", [("test_resnet", None), ("test_resnet", 1), ("test_vit", 1), ("test_convnext", None)])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name, frozen, demo_dir, tmp_path, tiny_cfg):
    """With the stem frozen too: a checkpointed block whose input needs no gradient must still give
    its weights theirs (the classic reentrant-checkpoint trap)."""
    cfg = tiny_cfg(demo_dir, tmp_path, f"model.name={name}", "model.grad_checkpointing=true",
                   *([f"model.freeze_stages={frozen}"] if frozen else []))
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime), dry=True)
    assert any(getattr(m, "grad_checkpointing", False) for m in s.model.modules())  # the config turned it on
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    loss0, g0, calls0 = _grads(cfg, False, x, y)
    loss1, g1, calls1 = _grads(cfg, True, x, y)
    assert calls0 == 1 and calls1 == 2  # checkpointing really recomputed the block in backward
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert g1.keys() == g0.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)


def test_drop_path_follows_the_config_and_a_model_without_it_is_refused():
    cfg, model = _vit(drop_path_rate=0.3)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) == pytest.approx(0.3) and rates == sorted(rates)  # rising with depth
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))  # branches dropped per sample
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    _, plain = _vit()
    assert not any(isinstance(m, timm.layers.DropPath) for m in plain.modules())
    with pytest.raises(UserError, match="vgg11 has no stochastic depth.*model.drop_path_rate=0"):
        build_model(load_config(overrides=["model.name=vgg11", "model.pretrained=false",
                                           "model.drop_path_rate=0.1"]).model, 3)


def test_a_model_without_checkpointing_is_refused_in_one_sentence(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(demo_dir, tmp_path, "model.name=vgg11", "model.grad_checkpointing=true", "aug.img_size=32")
    with pytest.raises(UserError, match="vgg11 does not support gradient checkpointing.*grad_checkpointing=false"):
        setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime), dry=True)


def test_warmup_in_epochs_and_steps_together_is_refused():
    with pytest.raises(UserError, match="sched.warmup_epochs or sched.warmup_steps, not both"):
        load_config(overrides=["sched.warmup_epochs=1", "sched.warmup_steps=10"])
    with pytest.raises(UserError, match="sched.warmup_steps .* sched.name=onecycle"):
        load_config(overrides=["sched.name=onecycle", "sched.warmup_steps=10"])


def test_fold_epochs_meet_the_step_budget():
    def train(**kw):
        return load_config(overrides=[f"train.{k}={v}" for k, v in kw.items()]).train

    assert fold_epochs(train(epochs=12, min_steps=200), 2) == 100
    assert fold_epochs(train(epochs=12, min_steps=200), 17) == 12  # the demo: 204 steps already
    assert fold_epochs(train(epochs=12, min_steps=204), 17) == 12
    assert fold_epochs(train(epochs=12, min_steps=205), 17) == 13
    assert fold_epochs(train(epochs=12, min_steps=0), 2) == 12
    assert fold_epochs(train(epochs=12, min_steps=200, limit_batches=2), 2) == 12  # a smoke run


def test_a_small_fold_trains_longer_and_its_schedule_follows(tmp_path, demo_cfg, capsys):
    comp = build_demo(tmp_path / "digits_60", train_size=60)
    assert pd.read_csv(comp / "train.csv")["label"].value_counts().tolist() == [6] * 10  # stratified
    assert len(pd.read_csv(comp / "sample_submission.csv")) == 360  # the same test images
    cfg = demo_cfg(comp, tmp_path / "out", "loader.batch_size=16", "loader.num_workers=0", "train.epochs=1",
                   "train.min_steps=10", "sched.warmup_epochs=0", "sched.min_lr=0", "data.check_images=false")
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    optimization(s)
    assert "train.min_steps=10: 3 optimizer steps an epoch, so 4 epochs instead of train.epochs=1" in capsys.readouterr().out
    assert s.epochs == 4
    result = train_fold(cfg, 0)
    assert result["epochs_run"] == 4
    history = pd.read_csv(tmp_path / "out" / "demo" / "fold0" / "history.csv")
    # The cosine runs over 12 steps, not 3: the rate after each epoch's updates follows cos(pi t / 12).
    lr = cfg.optim.lr
    assert list(history["epoch"]) == [0, 1, 2, 3]
    for epoch, got in zip(history["epoch"], history["lr"]):
        t = 3 * (epoch + 1)  # updates so far
        assert got == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * t / 12)), rel=1e-6), epoch
