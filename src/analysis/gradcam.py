"""What a trained timm model looks at: Grad-CAM, the first convolution's filters, early feature maps.

Grad-CAM (Selvaraju et al. 2017) weighs a feature map's channels by the mean gradient of the
class score over them, sums and rectifies. It is written here on hooks (a forward hook keeps the
activation, autograd its gradient), so it works for any timm model that names its stages in
`feature_info`: CNNs (NCHW or NHWC maps) and ViT-like models (tokens on a square grid).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import cv2
import numpy as np
import torch

from src.core.utils import UserError


def _stages(model: torch.nn.Module) -> list[dict]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(f"{type(model).__name__} names no feature stages (timm feature_info); pass --cam-layer "
                        "with a module name of the model")
    return [dict(i) for i in info]


def pick_cam_layer(model: torch.nn.Module, img_size: int, min_side: int = 4) -> str:
    """The deepest feature stage whose map is at least min_side x min_side at this input size (the
    last stage of a 224 px ResNet is 7x7; at 32 px it is 1x1, one value that says nothing of where)."""
    stages = _stages(model)
    fit = [s for s in stages if img_size // s["reduction"] >= min_side]
    if getattr(model, "global_pool", None) == "token" and len(fit) > 1:
        # A ViT classifying from its class token: the last block's patch tokens get no gradient.
        fit = fit[:-1]
    return (fit[-1] if fit else stages[0])["module"]


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    mods = dict(model.named_modules())
    if name not in mods:
        raise UserError(f"the model has no module '{name}'; its stages are {[s['module'] for s in _stages(model)]}")
    return mods[name]


def _as_nchw(a: torch.Tensor, channels: int | None, prefix_tokens: int) -> torch.Tensor:
    """A stage output as (N, C, h, w): NCHW kept, NHWC permuted, tokens (N, L, C) put on their grid."""
    if a.ndim == 3:
        a = a[:, prefix_tokens:]
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise UserError(f"cannot lay {a.shape[1]} tokens on a square grid; pass --cam-layer with a convolutional stage")
        return a.transpose(1, 2).reshape(a.shape[0], a.shape[2], side, side)
    if a.ndim != 4:
        raise UserError(f"a stage output of shape {tuple(a.shape)} is not a feature map; pass --cam-layer")
    if channels is not None and a.shape[1] != channels and a.shape[-1] == channels:
        return a.permute(0, 3, 1, 2)
    return a


@contextmanager
def _capture(modules: dict[str, torch.nn.Module]):
    """Outputs of the named modules during a forward pass."""
    acts: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, _inp, out):
            acts[name] = out[0] if isinstance(out, (tuple, list)) else out
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def grad_cam(model: torch.nn.Module, x: torch.Tensor, layer: str, target: int | None = None, activate=None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(Grad-CAM map in [0, 1] at the input's height and width, class probabilities) for one image.

    Args:
        model: a timm classifier returning logits, in eval mode.
        x: (1, 3, H, W) normalized input on the model's device.
        layer: module name of the stage to explain (pick_cam_layer).
        target: class whose score is explained; None = the largest output (the predicted class,
            the most probable label, a regression head's only output).
        activate: logits (1, C) as numpy -> the probabilities returned (Task.activate); default softmax.
    """
    channels = {s["module"]: s["num_chs"] for s in _stages(model)}.get(layer)
    model.eval()
    with torch.enable_grad(), _capture({layer: _module(model, layer)}) as acts:
        x = x.detach().float().requires_grad_(True)  # so the map has a gradient even in a frozen stage
        logits = model(x).float()  # (1, C)
        cls = int(logits.argmax(1)) if target is None else int(target)
        # Only the gradient of the class score at the stage: no parameter gradients are computed.
        (grad,) = torch.autograd.grad(logits[0, cls], acts[layer])
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    a = _as_nchw(acts[layer].detach().float(), channels, prefix)[0]  # (C, h, w)
    g = _as_nchw(grad.float(), channels, prefix)[0]
    cam = torch.relu((g.mean((1, 2))[:, None, None] * a).sum(0)).cpu().numpy()  # (h, w)
    cam = cv2.resize(cam, (x.shape[3], x.shape[2]), interpolation=cv2.INTER_LINEAR)  # (H, W)
    peak = float(cam.max())
    z = logits.detach()
    probs = activate(z.cpu().numpy())[0] if activate is not None else torch.softmax(z, 1)[0].cpu().numpy()
    return (cam / peak if peak > 0 else cam), probs


def first_conv_filters(model: torch.nn.Module) -> tuple[str, np.ndarray]:
    """(name, filters (O, kh, kw, 3 or 1) scaled to [0, 1] each) of the first 2-D convolution."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().float().cpu()  # (O, I, kh, kw)
            w = w if w.shape[1] == 3 else w.mean(1, keepdim=True)
            lo = w.amin((1, 2, 3), keepdim=True)
            hi = w.amax((1, 2, 3), keepdim=True)
            return name, ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()
    raise UserError("the model has no 2-D convolution whose filters could be shown")


@torch.no_grad()
def stage_maps(model: torch.nn.Module, x: torch.Tensor, n_stages: int = 3) -> dict[str, np.ndarray]:
    """Feature maps (C, h, w) of the first n_stages feature stages for one image x (1, 3, H, W)."""
    stages = _stages(model)[:n_stages]
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    mods = {s["module"]: _module(model, s["module"]) for s in stages}
    model.eval()
    with _capture(mods) as acts:
        model(x.float())
    return {s["module"]: _as_nchw(acts[s["module"]].float(), s["num_chs"], prefix)[0].cpu().numpy() for s in stages}
