"""Images stored as arrays (.npy): any channel count, uint8 kept, every other dtype as float32.

A uint8 array is an image as a photo is one (grayscale repeated into RGB, as Pillow reads a
grayscale PNG); any other dtype (uint16, float16, float32, Statoil's dB, SETI's spectrograms) keeps
its values as float32: cv2 resizes and warps no float16, and float32 holds uint16 and float16 exactly.
Such arrays travel as float32 through the image cache and the loader and are normalised on the
device with statistics of the training images themselves (`channel_stats`), in their own units.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from src.core.utils import UserError

ARRAY_EXTS = (".npy",)
MAX_CHANNELS_FIRST = 16  # a 3-D array whose first axis is at most this and shorter than its last is (C, H, W)
STATS_SAMPLE = 512  # training images the normalisation statistics are computed over (evenly spaced)


def read_array(path: str | Path) -> np.ndarray:
    """An .npy image as (H, W, C): uint8 as it is (1 channel repeated into 3), anything else float32.

    (C, H, W) arrays (SETI's (6, 273, 256)) are moved to channels last. Raises UserError naming
    the file when it is no 2-D or 3-D numeric array.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read image {path} ({e}); replace or remove the file") from None
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "uif" or 0 in arr.shape:
        raise UserError(f"cannot read image {path} (an array of shape {arr.shape} and dtype {arr.dtype}; an image "
                        "array is (H, W), (H, W, C) or (C, H, W) of numbers); replace or remove the file")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[0] <= MAX_CHANNELS_FIRST and arr.shape[0] < arr.shape[-1]:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)
    return np.ascontiguousarray(arr, dtype=np.float32)


def is_photo(img: np.ndarray) -> bool:
    """Whether an image is what pretrained weights and their mean/std expect: 3-channel uint8."""
    return img.dtype == np.uint8 and img.shape[2] == 3


def channel_stats(paths: list[str], read: Callable[[str], np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over up to STATS_SAMPLE evenly spaced images of `paths`, in the units
    the device normalisation takes (src.core.runtime.Norm): a fraction of 255 for uint8, raw values
    for float arrays. A constant channel gets std 1 (it is then only centred)."""
    pick = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), STATS_SAMPLE)).round().astype(int))
    total, squares, count = 0.0, 0.0, 0
    for i in pick:
        img = read(paths[i])
        flat = img.astype(np.float64).reshape(-1, img.shape[2]) / (255.0 if img.dtype == np.uint8 else 1.0)
        total, squares, count = total + flat.sum(0), squares + (flat ** 2).sum(0), count + len(flat)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) if v > 0 else 1.0 for v in std)
