"""Learning rates of every parameter group at every update, for every schedule.

A group with lr_scale (the formerly frozen backbone after unfreezing) must run at exactly
lr_scale times the head's lr at every step, and the head must follow the schedule's formula.
Reading only the end of a schedule proves nothing: the floor hides the scale."""

from __future__ import annotations

import math

import pytest
import torch

from src.core.config import load_config
from src.models.optim import build_optimizer, build_scheduler
from src.runs.checkpoint import load_checkpoint
from src.training.trainer import train_fold

LR, SCALE, EPOCHS, UPE = 1e-2, 0.1, 6, 4  # updates per epoch
MIN_LR, WARMUP_LR = 1e-4, 1e-5


def _sched_cfg(name: str, warmup: int):
    return load_config(overrides=[f"sched.name={name}", f"sched.warmup_epochs={warmup}", f"sched.min_lr={MIN_LR}",
                                  f"sched.warmup_lr={WARMUP_LR}", "sched.step_epochs=2", "sched.decay_rate=0.5",
                                  "sched.patience=0", f"optim.lr={LR}", "optim.name=sgd"])


def _lrs(name: str, warmup: int, metrics=None) -> list[tuple[float, float]]:
    """(head lr, backbone lr) before every update, stepping as the trainer does."""
    cfg = _sched_cfg(name, warmup)
    head, backbone = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(cfg.optim, [{"params": [head]}, {"params": [backbone], "lr_scale": SCALE}])
    sched = build_scheduler(cfg.sched, opt, LR, EPOCHS, UPE, higher_is_better=True)
    seen, n = [], 0
    for epoch in range(EPOCHS):
        for _ in range(UPE):
            seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
            opt.step()
            n += 1
            sched.step_update(num_updates=n)
        sched.step(epoch + 1, None if metrics is None else metrics[epoch])
    return seen


def _cosine(t: int, warmup: int) -> float:
    wt, total = warmup * UPE, EPOCHS * UPE
    if t < wt:
        return WARMUP_LR + t * (LR - WARMUP_LR) / wt
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t / total))


def _step(t: int, warmup: int) -> float:
    wt = warmup * UPE
    if t < wt:
        return WARMUP_LR + t * (LR - WARMUP_LR) / wt
    return LR * 0.5 ** (t // (2 * UPE))


def _plateau(t: int, warmup: int, decays_before: list[int]) -> float:
    wt = warmup * UPE
    if wt and t <= wt:
        return WARMUP_LR + t / wt * (LR - WARMUP_LR)
    epoch = t // UPE
    return max(MIN_LR, LR * 0.5 ** sum(1 for e in decays_before if e <= epoch))


CASES = [("cosine", 0), ("cosine", 2), ("step", 0), ("step", 1), ("plateau", 0), ("plateau", 2), ("onecycle", 0),
         ("none", 0)]


@pytest.mark.parametrize("name,warmup", CASES)
def test_every_group_at_every_update(name, warmup):
    # Plateau: the metric improves for 2 epochs, then stalls, so with patience 0 it decays at
    # the ends of epochs 2, 3, 4 (and the lr floor is reached).
    metrics = [0.1, 0.2, 0.2, 0.2, 0.2, 0.2]
    lrs = _lrs(name, warmup, metrics)
    assert len(lrs) == EPOCHS * UPE
    for t, (head, backbone) in enumerate(lrs):
        assert backbone == pytest.approx(SCALE * head, rel=1e-9), (name, warmup, t, head, backbone)
        if name == "cosine":
            assert head == pytest.approx(_cosine(t, warmup), rel=1e-9), t
        elif name == "step":
            assert head == pytest.approx(_step(t, warmup), rel=1e-9), t
        elif name == "plateau":
            assert head == pytest.approx(_plateau(t, warmup, decays_before=[3, 4, 5]), rel=1e-9), t
        elif name == "none":
            assert head == LR
    heads = [h for h, _ in lrs]
    if name == "onecycle":  # torch's OneCycleLR: lr/25 up to lr, then down to lr/25e4
        assert heads[0] == pytest.approx(LR / 25) and max(heads) == pytest.approx(LR, rel=5e-3)
        assert heads[-1] < LR / 100
    # The schedule really moves: the test looks where a wrong scale would show.
    if name != "none":
        assert max(heads) > 2 * min(heads)


def test_unfrozen_backbone_trains_at_lr_times_mult(demo_dir, tiny_cfg, tmp_path):
    """The issue's repro: step schedule, unfreeze after epoch 0; the backbone groups run at
    lr x backbone_lr_mult in the saved optimizer state, not lr x mult^2."""
    cfg = tiny_cfg(demo_dir, tmp_path, "model.name=resnet18", "model.freeze_before=layer4.0.conv1",
                   "model.unfreeze_epoch=1", "sched.name=step", "sched.step_epochs=100", "sched.warmup_epochs=0",
                   "optim.lr=1e-3", "train.epochs=2", "train.limit_batches=2")
    train_fold(cfg, 0)
    groups = load_checkpoint(tmp_path / "demo" / "fold0" / "last.pt")["train_state"]["optimizer"]["param_groups"]
    scaled = [g for g in groups if g.get("lr_scale") is not None]
    plain = [g for g in groups if g.get("lr_scale") is None]
    assert scaled and plain
    assert all(g["lr"] == pytest.approx(1e-4, rel=1e-9) for g in scaled), [g["lr"] for g in scaled]
    assert all(g["lr"] == pytest.approx(1e-3, rel=1e-9) for g in plain), [g["lr"] for g in plain]
