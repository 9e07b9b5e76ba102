"""Albumentations pipelines (uint8 out, normalised on the device) and the normalisation they use."""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from src.core.config import AugCfg

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


BORDER_MODES = {
    "wrap": cv2.BORDER_WRAP,
    "reflect": cv2.BORDER_REFLECT_101,
    "constant": cv2.BORDER_CONSTANT,
    "nearest": cv2.BORDER_REPLICATE,
}


def resolve_norm(aug: AugCfg, pretrained_cfg: dict | None = None) -> tuple[tuple, tuple]:
    """Normalization from the config, else from the model's pretrained config, else ImageNet."""
    pc = pretrained_cfg or {}
    mean = tuple(aug.mean) if aug.mean is not None else tuple(pc.get("mean", IMAGENET_MEAN))
    std = tuple(aug.std) if aug.std is not None else tuple(pc.get("std", IMAGENET_STD))
    return mean, std


def build_transform(aug: AugCfg, train: bool, mean: tuple | None = None, std: tuple | None = None) -> A.Compose:
    """Albumentations pipeline: uint8 HxWx3 -> uint8 tensor 3xSxS, normalised later on the device
    (src.core.runtime.Norm); with mean and std, -> a normalised float tensor (for CPU-side consumers).

    Training resizes first, so the affine warp runs on the small image (the same distribution of
    rotations, shifts, shears and zooms, a fraction of the cost on large photos), then flips.
    Evaluation: resize (to img_size / crop_pct, then center crop) and normalize only.
    """
    size = aug.img_size
    if train:
        ops: list = [A.Resize(size, size)]
        if aug.affine_p > 0:
            ops.append(
                A.Affine(
                    scale=tuple(aug.zoom),
                    translate_percent={"x": (-aug.shift, aug.shift), "y": (-aug.shift, aug.shift)},
                    rotate=(-aug.rotate, aug.rotate),
                    shear={"x": (-aug.shear, aug.shear), "y": (0.0, 0.0)},
                    border_mode=BORDER_MODES[aug.border_mode],
                    fill=0,
                    p=aug.affine_p,
                )
            )
        if aug.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if aug.vflip:
            ops.append(A.VerticalFlip(p=0.5))
    else:
        pre = int(round(size / aug.crop_pct))
        ops = [A.Resize(pre, pre)] + ([A.CenterCrop(size, size)] if pre != size else [])
    if mean is not None or std is not None:
        ops.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    return A.Compose([*ops, ToTensorV2()])


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed a pipeline: one numpy and one python generator shared by all its transforms.

    Compose.set_random_seed would give every child its own generator with the *same* seed, which
    makes e.g. the horizontal and vertical flip decisions identical; a shared stream is drawn in
    turn, so the decisions are independent (and it is 2 generators per sample, not 2 per child).
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
