"""Optimizer and learning-rate schedule factories over timm's (and torch's OneCycleLR), and the one
optimizer step every training loop takes (LossScaler)."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils import NativeScaler

from src.core.config import OptimCfg, SchedCfg

_TIMM_OPT = {"adam": "adam", "adamw": "adamw", "rmsprop": "rmsprop"}


def build_optimizer(cfg: OptimCfg, groups: list[dict], lr: float | None = None) -> torch.optim.Optimizer:
    """Adam, AdamW, SGD (momentum, optionally Nesterov) or RMSprop over prepared param groups, each
    at `lr` (default: optim.lr) times its lr_scale."""
    lr = cfg.peak_lr if lr is None else lr
    name = _TIMM_OPT.get(cfg.name) or ("sgd" if cfg.nesterov else "momentum")
    kwargs = {"momentum": cfg.momentum} if cfg.name in ("sgd", "rmsprop") else {}
    opt = create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=cfg.weight_decay, **kwargs)
    set_lr(opt, lr)
    return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group at lr times its lr_scale (layer decay, the unfrozen backbone's multiplier)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


class LossScaler(NativeScaler):
    """The optimizer step, as timm's NativeScaler takes it: a call scales `loss` and backpropagates;
    with `need_update` (an accumulation window complete) it also unscales, clips the gradient norm
    to `clip_grad` over `parameters`, steps the optimizer through the grad scaler, updates the scale,
    and then zeroes the gradients.

    Two differences from timm's: the grad scaler is enabled only where `enabled` (float16 autocast),
    so an fp32 or bf16 step is a plain backward and step with an empty scaler state (timm's train.py
    gets that by having no scaler there); and the gradients are zeroed after the update, which timm's
    train.py does after calling it."""

    def __init__(self, device: str, enabled: bool = True):
        # Not super().__init__: it always enables its scaler. `_scaler` is what NativeScaler's
        # __call__, state_dict and load_state_dict use.
        self._scaler = torch.amp.GradScaler(device, enabled=enabled)

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad: float | None = None,
                 clip_mode: str = "norm", parameters=None, create_graph: bool = False, need_update: bool = True) -> None:
        super().__call__(loss, optimizer, clip_grad=clip_grad, clip_mode=clip_mode, parameters=parameters,
                         create_graph=create_graph, need_update=need_update)
        if need_update:
            optimizer.zero_grad(set_to_none=True)


class _Constant:
    """No schedule: every group keeps lr * lr_scale."""

    def step_update(self, num_updates: int, metric: float | None = None) -> None: ...

    def step(self, epoch: int, metric: float | None = None) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class _OneCycle(_Constant):
    """torch's OneCycleLR behind timm's step_update/step interface (stepped per update)."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, total_steps: int):
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[lr * g.get("lr_scale", 1.0) for g in opt.param_groups], total_steps=max(1, total_steps)
        )

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        if self.sched.last_epoch < self.sched.total_steps - 1:
            self.sched.step()

    def state_dict(self) -> dict:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state)


class _Plateau(_Constant):
    """torch's ReduceLROnPlateau (fully checkpointed, unlike timm's deprecated wrapper), after an
    optional linear warmup over updates."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: SchedCfg, warmup_updates: int, higher_is_better: bool):
        self.opt, self.warmup_updates = opt, warmup_updates
        # Each group keeps its lr_scale through warmup and at the floor, as in timm's schedules.
        self.peak = [g["lr"] for g in opt.param_groups]
        self.start = [cfg.warmup_lr * g.get("lr_scale", 1.0) for g in opt.param_groups]
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max" if higher_is_better else "min", factor=cfg.decay_rate, patience=cfg.patience,
            min_lr=[cfg.min_lr * g.get("lr_scale", 1.0) for g in opt.param_groups],
        )
        if warmup_updates:
            self.step_update(0)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        if num_updates <= self.warmup_updates and self.warmup_updates:
            frac = num_updates / self.warmup_updates
            for g, start, peak in zip(self.opt.param_groups, self.start, self.peak):
                g["lr"] = start + frac * (peak - start)

    def step(self, epoch: int, metric: float | None = None) -> None:
        if metric is not None:
            self.sched.step(metric)

    def state_dict(self) -> dict:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state)


def build_scheduler(cfg: SchedCfg, opt: torch.optim.Optimizer, lr: float, epochs: int, updates_per_epoch: int,
                    higher_is_better: bool):
    """A schedule with `step_update(num_updates)` per optimizer step and `step(epoch, metric)` per epoch.

    cosine and step (timm's) are stepped per update, so warmup is smooth; plateau (torch's) decays per
    epoch on the monitored value.
    """
    if cfg.name == "none":
        return _Constant()
    if cfg.name == "onecycle":
        return _OneCycle(opt, lr, epochs * updates_per_epoch)
    if cfg.name == "plateau":
        return _Plateau(opt, cfg, cfg.warmup_updates(updates_per_epoch), higher_is_better)
    # timm's schedules read every group's base lr and multiply it by the group's lr_scale
    # themselves, so they start from the unscaled lr (else a scaled group gets lr x scale^2).
    for g in opt.param_groups:
        g["lr"] = lr
        g.pop("initial_lr", None)
    # Stepped per optimizer update (t_in_epochs=False), so warmup (in whole epochs or in steps) is smooth.
    warmup = {"warmup_lr_init": cfg.warmup_lr, "warmup_t": cfg.warmup_updates(updates_per_epoch),
              "warmup_prefix": False, "t_in_epochs": False}
    if cfg.name == "cosine":
        # One cycle: cycle_decay never applies; 0.1 as create_scheduler_v2 passes it (1.0 warns on 1-step runs).
        return CosineLRScheduler(opt, t_initial=epochs * updates_per_epoch, lr_min=cfg.min_lr, cycle_decay=0.1, **warmup)
    return StepLRScheduler(opt, decay_t=cfg.step_epochs * updates_per_epoch, decay_rate=cfg.decay_rate, **warmup)
