"""The Dataset of images and targets, and DataLoaders with the config's workers and seeded epochs."""

from __future__ import annotations

import os

import albumentations as A
import numpy as np
import torch

from src.core import distributed
from src.core.config import Config, LoaderCfg
from src.core.distributed import EpochSampler
from src.core.runtime import Norm, Runtime
from src.core.utils import UserError
from src.data.arrays import channel_stats, is_photo
from src.data.image_cache import image_cache, unreadable
from src.data.images import find_bad_images, read_image
from src.data.transforms import build_transform, resolve_norm, seed_transform


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, target) for training/validation; (image tensor, row index) when targets is None.

    An item may be asked for as `(index, seed)` (see EpochSampler): the augmentation is then
    seeded per sample, so a given epoch sees the same augmented images whatever the worker
    count, worker persistence or a resume in between. With a `cache` (src.data.image_cache.ImageCache
    at the transform's first side), images are read from it instead of decoded; without one,
    DICOM files are decoded with `dicom_window` (data.dicom_window). With `meta` (N, D), each image's
    metadata vector (src.data.meta_table.encode) comes with it: the item's input is the pair (image, meta).
    """

    def __init__(self, paths: list[str], targets: list[int] | None, transform: A.Compose | None, cache=None,
                 dicom_window: tuple[float, float] | None = None, meta: np.ndarray | None = None):
        self.paths = list(paths)
        self.meta = None if meta is None else torch.from_numpy(np.asarray(meta, dtype=np.float32))
        # class indices (N,), a 0/1 matrix (N, L) for a multi-label task, or a regression's float values (N,)
        # (src.core.tasks Task.targets): only class indices are made int64
        targets = None if targets is None else np.asarray(targets)
        keep = targets is None or targets.ndim == 2 or targets.dtype.kind == "f"
        self.targets = targets if keep else targets.astype(np.int64)
        self.transform = transform
        self.cache = cache
        self.dicom_window = dicom_window

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.cache.load(self.paths[i]) if self.cache is not None else read_image(self.paths[i], self.dicom_window)
        if self.transform is None:
            x = torch.from_numpy(img)
        else:
            if seed is not None:
                seed_transform(self.transform, seed)
            x = self.transform(image=img)["image"]
        if self.meta is not None:
            x = (x, self.meta[i])
        if self.targets is None:
            return x, i
        return x, (torch.from_numpy(self.targets[i].astype(np.float32)) if self.targets.ndim == 2
                   else int(self.targets[i]))


def with_image_inputs(cfg: Config, paths: list[str]) -> Config:
    """`cfg` with what its training images imply, written into every checkpoint's config so that
    inference reuses it: model.in_chans (null: the images' channel count, kept null for 3) and, for
    images that are not 3-channel uint8 photos (src.data.arrays), aug.mean / aug.std (null: their
    per-channel statistics). A count or statistics that contradict the images stop the run in one sentence."""
    if not paths:
        return cfg
    first = read_image(paths[0], cfg.data.dicom_window)
    channels = first.shape[2]
    if cfg.model.in_chans not in (None, channels):
        raise UserError(f"model.in_chans={cfg.model.in_chans} but the training images have {channels} channels "
                        f"(e.g. {paths[0]}); set model.in_chans={channels} or null")
    aug = cfg.aug
    for key, given in (("mean", aug.mean), ("std", aug.std)):
        if given is not None and len(given) != channels:
            raise UserError(f"aug.{key} has {len(given)} values but the training images have {channels} channels "
                            f"(e.g. {paths[0]}); give one per channel, or null for the images' own statistics")
    if aug.mean is None and aug.std is None and not is_photo(first):
        mean, std = channel_stats(sorted(set(paths)), lambda p: read_image(p, cfg.data.dicom_window))
        aug = aug.model_copy(update={"mean": mean, "std": std})
    elif (aug.mean is None) != (aug.std is None) and not is_photo(first):
        raise UserError(f"the training images are not 3-channel uint8 photos (e.g. {paths[0]}: {channels} channels, "
                        f"{first.dtype}), so aug.mean and aug.std go together: set both, or neither")
    # 3 channels stay null (build_model's default): photo runs keep the config they had before in_chans existed
    in_chans = cfg.model.in_chans if channels == 3 else channels
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"in_chans": in_chans}), "aug": aug})


def resolve_workers(cfg: LoaderCfg) -> int:
    """loader.num_workers, with `auto` = the cores this process may run on."""
    if cfg.num_workers != "auto":
        return int(cfg.num_workers)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def make_loader(
    ds: ImageDataset, cfg: LoaderCfg, *, device: str = "cpu", sampler: EpochSampler | None = None,
    drop_last: bool = False, batch_size: int | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader with the config's batch size, workers, pinning and persistence (in order
    unless a sampler is given)."""
    bs = batch_size or cfg.batch_size
    workers = resolve_workers(cfg)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=bs,
        sampler=sampler,
        drop_last=drop_last and len(ds) > bs,
        num_workers=workers,
        pin_memory=cfg.pin_memory and device == "cuda",
        persistent_workers=cfg.persistent_workers and workers > 0,
    )


def check_test_images(cfg: Config, paths: list[str]) -> None:
    """Every one of `paths` decodes, or one sentence, writing nothing: each image the evaluation
    cache (data.cache) does not hold yet is decoded once (a cached one decoded fine when it was
    cached). For a command that writes before its test pass (src.ensemble's OOF predictions)."""
    images = image_cache(cfg, train=False)
    todo = images.missing(paths) if images is not None else paths
    bad = find_bad_images(todo, max(2, resolve_workers(cfg.loader)), dicom_window=cfg.data.dicom_window)
    if bad:
        raise unreadable(bad)


def eval_loader(cfg: Config, paths: list[str], loader_cfg: LoaderCfg, rt: Runtime,
                pretrained_cfg: dict | None, meta: np.ndarray | None = None) -> tuple[torch.utils.data.DataLoader, Norm]:
    """The evaluation pass's loader over `paths` (through the image cache, filled first) and the
    normalisation its uint8 batches get on the device; `meta`: the images' metadata vectors."""
    images = image_cache(cfg, train=False)
    if images is not None:
        distributed.main_first(lambda: images.fill_or_fail(paths, workers=max(2, resolve_workers(loader_cfg))))
    ds = distributed.shard_dataset(ImageDataset(paths, None, build_transform(cfg.aug, False), images, cfg.data.dicom_window, meta),
                                   loader_cfg.batch_size)  # this rank's share under torchrun
    loader = make_loader(ds, loader_cfg, device=rt.device.type)
    return loader, Norm(*resolve_norm(cfg.aug, pretrained_cfg))
