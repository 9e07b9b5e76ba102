"""Data layer: competition tables, robust image reading, albumentations transforms, Dataset."""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image, ImageOps

from src.config import AugCfg, Config, DataCfg, LoaderCfg
from src.progress import progress
from src.utils import UserError, atomic_write_text

# Loader workers are the parallelism: OpenCV's own thread pool would oversubscribe the cores, and
# a pool that exists when a worker is forked can deadlock it (so this is set here, never in a worker).
cv2.setNumThreads(1)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BORDER_MODES = {
    "wrap": cv2.BORDER_WRAP,
    "reflect": cv2.BORDER_REFLECT_101,
    "constant": cv2.BORDER_CONSTANT,
    "nearest": cv2.BORDER_REPLICATE,
}


# ---------------------------------------------------------------- reading images


def read_image(path: str | Path) -> np.ndarray:
    """Read any image file into an HxWx3 uint8 RGB array.

    Handles grayscale, RGBA/LA and palette PNGs, 16-bit PNGs (scaled to 8 bits), CMYK JPEGs and
    EXIF orientation. Raises UserError naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                # 16-bit data uses the full 0..65535 range; int32 'I' images may too.
                arr = np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
                return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
            if im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo or 1.0) * 255.0
                return np.repeat(arr.round().astype(np.uint8)[..., None], 3, axis=2)
            if im.mode != "RGB":
                im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA") else im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise UserError(f"cannot read image {path} ({e}); replace or remove the file") from None
    return np.ascontiguousarray(arr)


def find_bad_images(paths: list[str], workers: int = 4, cache=None, **fill) -> list[str]:
    """Decode every image once (in threads) and return the paths that fail. With an ImageCache,
    the same pass fills it (images already cached decoded fine before); `fill` goes to its fill."""
    if cache is not None:
        return cache.fill(paths, workers, desc="checking and caching images", **fill)

    def ok(p: str) -> bool:
        try:
            read_image(p)
            return True
        except UserError:
            return False

    with ThreadPoolExecutor(max(1, workers)) as pool:
        good = list(progress(pool.map(ok, paths), total=len(paths), desc="checking images"))
    return [p for p, g in zip(paths, good) if not g]


# ---------------------------------------------------------------- competition tables


class _ImageIndex:
    """Maps an id (with or without extension, with or without subfolders) to its file.

    Where an id without extension matches several files, data.image_exts decides in its order;
    two files of the same rank (a bare name in two folders) are ambiguous.
    """

    def __init__(self, root: Path, exts: list[str]):
        self.root = root
        self.exts = [e.lower() for e in exts]
        self.by_key: dict[str, list[Path]] = {}
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() not in self.exts or not p.is_file():
                continue
            rel = p.relative_to(root).as_posix()
            for key in {rel, rel[: -len(p.suffix)], p.name, p.stem}:
                self.by_key.setdefault(key, []).append(p)

    def find(self, image_id: str) -> Path | None:
        found = self.by_key.get(str(image_id).replace("\\", "/"), [])
        if len(found) <= 1:
            return found[0] if found else None
        rank = min(self.exts.index(p.suffix.lower()) for p in found)
        best = [p for p in found if self.exts.index(p.suffix.lower()) == rank]
        return best[0] if len(best) == 1 else None


# What pandas would read as a missing value: a label spelled so is almost always a hole in the data.
NA_LIKE = {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
           "NULL", "NaN", "None", "n/a", "nan", "null"}
DEMO_DIR = Path("inputs/digits")


def require_data_dir(cfg: DataCfg) -> Path:
    """The competition folder; a missing one names the fix (for the demo's: the command that builds it)."""
    root = Path(cfg.dir)
    if root.is_dir():
        return root
    if root.resolve() == DEMO_DIR.resolve():
        raise UserError(f"the demo competition {root} does not exist yet; python -m src.demo builds it")
    raise UserError(f"competition folder {root} does not exist; copy the competition files there or set data.dir")


def _not_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        return f"{path} cannot be decoded as text"
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        return (f"{path} is not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); re-save it as UTF-8, "
                f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8.csv")


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; copy the competition files into {path.parent} or set data.dir")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(_not_utf8(path)) from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty; it needs a header and one row per image") from None
    if len(df) == 0:
        raise UserError(f"{what} {path} has a header but no rows; it needs one row per image")
    return df


def _require_cols(df: pd.DataFrame, cols: dict[str, str], path: Path) -> None:
    for key, col in cols.items():
        if col not in df.columns:
            raise UserError(
                f"{path} has no column '{col}' ({key}); its columns are {list(df.columns)}: set {key}"
            )


def _attach_paths(df: pd.DataFrame, id_col: str, image_dir: Path, exts: list[str], what: str) -> pd.DataFrame:
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} does not exist; copy the images there or set data.image_dir / data.test_dir")
    index = _ImageIndex(image_dir, exts)
    paths = [index.find(i) for i in df[id_col]]
    missing = [i for i, p in zip(df[id_col], paths) if p is None]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(
            f"{len(missing)} {what} ids have no image file in {image_dir} (tried extensions {exts}): {shown}; "
            "add the files, fix the ids, or set data.image_exts"
        )
    out = df.copy()
    out["path"] = [str(p) for p in paths]
    return out


def _clean_labels(raw: pd.DataFrame, col: str, path: Path, na_labels: str) -> pd.DataFrame:
    """Labels without surrounding whitespace ('3 ' is '3', said once); NA-like labels refused
    unless data.na_labels=keep."""
    stripped = raw[col].str.strip()
    changed = int((stripped != raw[col]).sum())
    if changed:
        print(f"note: stripped surrounding whitespace from {changed} labels in {path}")
    empty = raw.index[stripped == ""].tolist()
    if empty:
        raise UserError(f"{path} has {len(empty)} rows without a label (first at row {empty[0] + 2}); fill or drop them")
    na = raw.index[stripped.isin(NA_LIKE)].tolist()
    if na and na_labels == "error":
        raise UserError(f"{path} has {len(na)} labels that read as missing values (e.g. '{stripped[na[0]]}' at row "
                        f"{na[0] + 2}); fix or drop those rows, or set data.na_labels=keep to train them as a class")
    return raw.assign(**{col: stripped})


def load_train_table(cfg: DataCfg) -> pd.DataFrame:
    """Training table with columns id, label (str), path and, when configured, group."""
    root = require_data_dir(cfg)
    if cfg.layout == "imagefolder":
        img_root = root / cfg.image_dir
        if not img_root.is_dir():
            raise UserError(f"image folder {img_root} does not exist; copy train/<class>/*.jpg there or set data.image_dir")
        exts = [e.lower() for e in cfg.image_exts]
        rows = [
            (p.relative_to(img_root).with_suffix("").as_posix(), d.name, str(p))
            for d in sorted(x for x in img_root.iterdir() if x.is_dir())
            for p in sorted(d.rglob("*"))
            if p.suffix.lower() in exts and p.is_file()
        ]
        if not rows:
            raise UserError(f"{img_root} holds no class folders with images; expected {img_root}/<class>/<image>")
        df = pd.DataFrame(rows, columns=["id", "label", "path"])
    else:
        path = root / cfg.train_csv
        raw = _read_csv(path, "training table")
        cols = {"data.id_col": cfg.id_col, "data.label_col": cfg.label_col}
        if cfg.group_col:
            cols["data.group_col"] = cfg.group_col
        _require_cols(raw, cols, path)
        raw = _clean_labels(raw, cfg.label_col, path, cfg.na_labels)
        dup = raw[cfg.id_col][raw[cfg.id_col].duplicated()].tolist()
        if dup:
            raise UserError(f"{path} lists {len(dup)} ids twice (e.g. {dup[:3]}); each image must appear once")
        df = _attach_paths(raw, cfg.id_col, root / cfg.image_dir, cfg.image_exts, "training")
        df = df.rename(columns={cfg.id_col: "id", cfg.label_col: "label"})
        if cfg.group_col:
            df = df.rename(columns={cfg.group_col: "group"})
        df = df[["id", "label", "path"] + (["group"] if cfg.group_col else [])]
    if cfg.group_col and "group" not in df:
        raise UserError("data.group_col works only with data.layout=csv; set it to null")
    return df.reset_index(drop=True)


def load_test_table(cfg: DataCfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test table with id and path in sample_submission order, the sample submission itself)."""
    root = require_data_dir(cfg)
    path = root / cfg.sample_submission
    sample = _read_csv(path, "sample submission")
    _require_cols(sample, {"data.id_col": cfg.id_col}, path)
    test = _attach_paths(sample[[cfg.id_col]], cfg.id_col, root / cfg.test_dir, cfg.image_exts, "test")
    return test.rename(columns={cfg.id_col: "id"}).reset_index(drop=True), sample


def sorted_classes(labels: pd.Series) -> list[str]:
    """Fixed class order: numeric labels sorted as numbers, others as strings."""
    uniq = list(pd.unique(labels.astype(str)))
    try:
        return sorted(uniq, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(uniq)


def _files_key(paths: list[str]) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def drop_bad_images(df: pd.DataFrame, cfg: Config, cache: Path | None = None,
                    defer: list[Callable[[], None]] | None = None, images=None,
                    undo: list[Callable[[], None]] | None = None) -> pd.DataFrame:
    """Check every image once; stop, or drop the bad ones with a warning (data.bad_images).

    With `cache`, the result is remembered for this exact set of files (path, size, mtime), so
    later folds and runs skip the full decode of a large training set. With `defer`, the cache
    write is appended there instead of done, for the caller to run once its own checks passed.
    With `images` (an ImageCache), the check fills it: every image is decoded once in all (its new
    entries land with the deferred writes; `undo` receives their removal).
    """
    if not cfg.data.check_images:
        return df
    paths = df["path"].tolist()
    key = _files_key(paths) if cache is not None else None
    if cache is not None and cache.is_file() and json.loads(cache.read_text()).get("key") == key:
        bad = json.loads(cache.read_text())["bad"]
    else:
        fill = {"keep_if_bad": cfg.data.bad_images == "skip", "defer": defer, "undo": undo} if images else {}
        bad = find_bad_images(paths, workers=max(2, resolve_workers(cfg.loader)), cache=images, **fill)
        if cache is not None and (not bad or cfg.data.bad_images == "skip"):
            write = lambda: atomic_write_text(cache, json.dumps({"key": key, "bad": bad}))  # noqa: E731
            write() if defer is None else defer.append(write)
    if not bad:
        return df
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    if cfg.data.bad_images == "error":
        raise UserError(
            f"{len(bad)} images cannot be decoded: {shown}; replace them, or set data.bad_images=skip to drop them"
        )
    warnings.warn(f"skipping {len(bad)} unreadable images: {shown}", stacklevel=2)
    return df[~df["path"].isin(bad)].reset_index(drop=True)


# ---------------------------------------------------------------- transforms


def resolve_norm(aug: AugCfg, pretrained_cfg: dict | None = None) -> tuple[tuple, tuple]:
    """Normalization from the config, else from the model's pretrained config, else ImageNet."""
    pc = pretrained_cfg or {}
    mean = tuple(aug.mean) if aug.mean is not None else tuple(pc.get("mean", IMAGENET_MEAN))
    std = tuple(aug.std) if aug.std is not None else tuple(pc.get("std", IMAGENET_STD))
    return mean, std


def build_transform(aug: AugCfg, train: bool, mean: tuple | None = None, std: tuple | None = None) -> A.Compose:
    """Albumentations pipeline: uint8 HxWx3 -> uint8 tensor 3xSxS, normalised later on the device
    (src.runtime.Norm); with mean and std, -> a normalised float tensor (for CPU-side consumers).

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


# ---------------------------------------------------------------- dataset and loaders


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, target) for training/validation; (image tensor, row index) when targets is None.

    An item may be asked for as `(index, seed)` (see EpochSampler): the augmentation is then
    seeded per sample, so a given epoch sees the same augmented images whatever the worker
    count, worker persistence or a resume in between. With a `cache` (src.image_cache.ImageCache
    at the transform's first side), images are read from it instead of decoded.
    """

    def __init__(self, paths: list[str], targets: list[int] | None, transform: A.Compose | None, cache=None):
        self.paths = list(paths)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.cache.load(self.paths[i]) if self.cache is not None else read_image(self.paths[i])
        if self.transform is None:
            x = torch.from_numpy(img)
        else:
            if seed is not None:
                seed_transform(self.transform, seed)
            x = self.transform(image=img)["image"]
        return x, (int(self.targets[i]) if self.targets is not None else i)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, augmentation seed), shuffled, both a pure function of (seed, epoch).

    It runs in the main process, so `set_epoch` reaches persistent workers too.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])


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
