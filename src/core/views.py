"""Test-time augmentation views: names, checking, and applying one view to a batch.

Views act on normalized batches already on the device (N, C, H, W), so an image is decoded and
resized once and every view is made from it. The D4 group (flips, right-angle rotations,
transposes), `scale<f>` (the input resized by f: multi-scale) and `zoom<f>` (the content
magnified by f at the same input size, like the training zoom).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from src.core.utils import UserError

D4: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(3),
    "vflip": lambda x: x.flip(2),
    "rot90": lambda x: torch.rot90(x, 1, (2, 3)),
    "rot180": lambda x: torch.rot90(x, 2, (2, 3)),
    "rot270": lambda x: torch.rot90(x, 3, (2, 3)),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: torch.rot90(x, 2, (2, 3)).transpose(2, 3),
}
_SCALED = re.compile(r"^(scale|zoom)(\d+(?:\.\d+)?)$")
SCALE_RANGE = (0.25, 4.0)  # beyond these a view shows the model nothing it was trained on


def parse_views(names: list[str]) -> list[str]:
    """Expand `d4` and check every view name; duplicates are dropped, order kept."""
    out: list[str] = []
    for n in names:
        if n == "d4":
            out += list(D4)
        elif n in D4:
            out.append(n)
        elif n == "auto":
            raise UserError("TTA 'auto' (views chosen on OOF) comes first in a list of candidates, e.g. --tta auto "
                            "hflip zoom1.05 or ensemble.tta: [auto, hflip, zoom1.05]")
        elif m := _SCALED.match(n):
            f = float(m.group(2))
            if not SCALE_RANGE[0] <= f <= SCALE_RANGE[1]:
                raise UserError(f"TTA view '{n}' has factor {f:g}, outside {SCALE_RANGE[0]}..{SCALE_RANGE[1]}; "
                                f"use a factor near 1, e.g. {m.group(1)}0.9 or {m.group(1)}1.15")
            out.append(n)
        else:
            raise UserError(f"unknown TTA view '{n}'; use {', '.join(D4)}, d4, scale<f> or zoom<f> (e.g. scale1.15, zoom0.9)")
    return list(dict.fromkeys(out))


def split_auto(names: list[str]) -> tuple[list[str], bool]:
    """(views, auto?): a list that begins with `auto` (ensemble.tta: [auto, hflip, ...]) asks for the
    views to be chosen on OOF among the rest; any other list is the views themselves."""
    if names and names[0] == "auto":
        return parse_views(names[1:]), True
    return parse_views(names), False


def apply_view(name: str, x: torch.Tensor) -> torch.Tensor:
    """One view of a normalized batch (N, C, H, W) -> (N, C, H', W').

    scale<f> returns round(f * H) pixels a side (H' = f H); every other view keeps the size.
    zoom<f> center-crops the magnified batch (f >= 1) or pads it with its edge pixels (f < 1).
    """
    m = _SCALED.match(name)
    if not m:
        return D4[name](x)
    f = float(m.group(2))
    h, w = x.shape[2], x.shape[3]
    size = (max(1, round(h * f)), max(1, round(w * f)))
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=f < 1)
    if m.group(1) == "scale":
        return y
    if f >= 1:
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        return y[:, :, top:top + h, left:left + w]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return F.pad(y, (left, w - size[1] - left, top, h - size[0] - top), mode="replicate")
