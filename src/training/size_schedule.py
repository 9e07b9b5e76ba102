"""Progressive resizing (aug.size_schedule): training batches are resized on the device to the size
scheduled for the epoch; images are decoded and augmented at aug.img_size, the final size, at which
validation, OOF and test predictions run. Meant for CNNs: a model with a fixed input size (most
ViTs) refuses other sizes. The size is a function of the epoch alone, so a resumed
run trains each epoch at the size an uninterrupted one would."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def size_at(schedule: list[tuple[int, int]] | None, epoch: int) -> int | None:
    """The training input size of an epoch: the entry with the latest start epoch <= epoch (None
    without a schedule)."""
    if not schedule:
        return None
    return [size for start, size in schedule if start <= epoch][-1]


def resize_batch(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """A batch (N, C, H, W) resized to (N, C, size, size); unchanged when size is None or already so."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
