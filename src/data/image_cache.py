"""Decoded, resized images on disk: each photo is decoded once, not once per epoch, fold and trial.

An entry is the image exactly as the transform's first step (a resize to a square side) would
make it from the decoded file, stored as a .npy of bytes under `<cache_dir>/<side>px/`: the pixels
(uint8, or float32 for arrays of other dtypes: src.data.arrays), their channel count and dtype. Its name is
the sha1 of the file's bytes (images.content_sha1) and the side, so a changed file gets a new entry
whatever its path, size and times, and every fold, epoch, Optuna trial, TTA pass and ensemble
member with the same side shares one. The entry ends with the sha1 of its name and pixels: an entry
damaged, or replaced by another image's, fails that check and is built again. Entries are written to a temporary file and renamed into place, so two
processes filling the cache at once (two folds, two tuning workers) each see either no entry or a
complete one. Since the transform's resize of an image already at its side is a no-op, a cached
image goes through the rest of the pipeline exactly as a freshly decoded one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from albumentations.augmentations.geometric.functional import resize

from src.core.config import AugCfg, Config
from src.core.progress import progress
from src.core.utils import MissingDecoder, UserError, atomic_save_npy
from src.data.images import content_sha1, read_image

CACHE_VERSION = 3  # bump when read_image or the resize changes what an entry holds (2: content keys, sealed
# entries; 3: any channel count and float32 pixels, described by a header)
SEAL = 20  # bytes of sha1 that end an entry: of its key, its pixels and its header
DTYPES = {0: np.dtype(np.uint8), 1: np.dtype(np.float32)}  # header code -> the pixels' dtype


def transform_side(aug: AugCfg, train: bool) -> int:
    """The square side the transform resizes to first: img_size to train, img_size / crop_pct to evaluate."""
    return aug.img_size if train else int(round(aug.img_size / aug.crop_pct))


def cache_root(cfg: Config) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.experiment.output_dir) / "cache"


class ImageCache:
    """Images of one square side, decoded and resized once (`load` builds a missing entry);
    `dicom_window` (data.dicom_window) is how DICOM files are decoded, so it is part of each key."""

    def __init__(self, root: str | Path, side: int, dicom_window: tuple[float, float] | None = None):
        self.side = int(side)
        self.dir = Path(root) / f"{self.side}px"
        self.dicom_window = None if dicom_window is None else tuple(float(v) for v in dicom_window)

    def entry(self, path: str) -> Path:
        window = "" if self.dicom_window is None else f"\0window {self.dicom_window}"  # no window: the keys of before
        key = hashlib.sha1(f"{CACHE_VERSION}\0{content_sha1(path)}\0{self.side}{window}".encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.npy"

    def _seal(self, entry: Path, body: np.ndarray) -> np.ndarray:
        return np.frombuffer(hashlib.sha1(entry.stem.encode() + body.tobytes()).digest(), dtype=np.uint8)

    @staticmethod
    def _body(img: np.ndarray) -> np.ndarray:
        """The pixels' bytes, then a 3-byte header: the channel count (2 bytes) and the dtype's code."""
        code = next(k for k, d in DTYPES.items() if d == img.dtype)
        header = np.array([img.shape[2] & 0xFF, img.shape[2] >> 8, code], dtype=np.uint8)
        return np.concatenate([np.ascontiguousarray(img).reshape(-1).view(np.uint8), header])

    def build(self, path: str, entry: Path | None = None, into: Path | None = None) -> np.ndarray:
        """Decode and resize `path`, store it (under `into`, a staging folder, when given), return
        it; UserError naming the file when it cannot be decoded."""
        entry = entry or self.entry(path)
        img = resize(read_image(path, self.dicom_window), (self.side, self.side), cv2.INTER_LINEAR)
        img = np.ascontiguousarray(img.reshape(self.side, self.side, -1))  # cv2 drops a single channel's axis
        body = self._body(img)
        target = entry if into is None else into / entry.relative_to(self.dir)
        try:
            atomic_save_npy(target, np.concatenate([body, self._seal(entry, body)]))  # readers see no entry or a whole one
        except OSError as e:
            raise self._unwritable(e) from None
        return img

    def _unwritable(self, e: OSError) -> UserError:
        return UserError(f"cannot write the image cache in {self.dir.parent} ({e.strerror}); give data.cache_dir a "
                         "writable folder, or set data.cache=false")

    def read(self, path: str) -> np.ndarray | None:
        """The entry of `path` when it is there and whole (its seal matches its name and pixels), else None."""
        entry = self.entry(path)
        try:
            stored = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing, or damaged by something outside this code
            return None  # (a full disk, a manual edit)
        if stored.ndim != 1 or stored.dtype != np.uint8 or len(stored) < SEAL + 3:
            return None
        body, seal = stored[:-SEAL], stored[-SEAL:]
        channels, dtype = int(body[-3]) | int(body[-2]) << 8, DTYPES.get(int(body[-1]))
        if dtype is None or len(body) - 3 != self.side * self.side * channels * dtype.itemsize:
            return None
        if not np.array_equal(seal, self._seal(entry, body)):
            return None
        return body[:-3].view(dtype).reshape(self.side, self.side, channels).copy()  # aligned for cv2

    def load(self, path: str) -> np.ndarray:
        """The cached image of `path` (HxWxC at the cache's side, uint8 or float32), built first when missing
        or when the entry's seal does not match its name and pixels."""
        img = self.read(path)
        return img if img is not None else self.build(path)

    def missing(self, paths: list[str]) -> list[str]:
        return [p for p in paths if not self.entry(p).is_file()]

    def fill(self, paths: list[str], workers: int, desc: str = "caching images", keep_if_bad: bool = False,
             defer: list | None = None, undo: list | None = None) -> list[str]:
        """Build every missing entry (threads; decoding releases the GIL) and return the paths that
        cannot be decoded. A progress bar shows only when there is something to build.

        New entries are built in a staging folder and moved into place only when no image failed
        (or keep_if_bad): a run stopped by a bad image leaves the cache as it was. With `defer`
        and `undo` lists, the move (or the removal of the staging folder) is appended there, for
        a caller whose own checks come later.
        """
        todo = self.missing(list(dict.fromkeys(paths)))
        if not todo:
            return []
        existed = [d for d in (self.dir.parent, self.dir) if d.is_dir()]
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=f".staging-{self.side}px-"))
        except OSError as e:
            raise self._unwritable(e) from None

        def ok(p: str) -> bool:
            try:
                self.build(p, into=staging)
                return True
            except UserError as e:
                if "image cache" in str(e) or isinstance(e, MissingDecoder):  # no image is to blame
                    raise
                return False

        try:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                good = list(progress(pool.map(ok, todo), total=len(todo), desc=f"{desc} at {self.side} px"))
        except BaseException:
            self._discard(staging, existed)
            raise
        bad = [p for p, g in zip(todo, good) if not g]
        if bad and not keep_if_bad:
            self._discard(staging, existed)
        elif defer is not None and undo is not None:
            defer.append(lambda: self._commit(staging))
            undo.append(lambda: self._discard(staging, existed))
        else:
            self._commit(staging)
        return bad

    def _commit(self, staging: Path) -> None:
        for f in staging.rglob("*.npy"):
            target = self.dir / f.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
        shutil.rmtree(staging, ignore_errors=True)

    def _discard(self, staging: Path, existed: list[Path]) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        for d in (self.dir, self.dir.parent):  # folders this fill created, now empty
            if d not in existed and d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def fill_or_fail(self, paths: list[str], workers: int) -> None:
        """fill, stopping with one sentence at an unreadable image (a training set's were checked
        before the split when data.check_images is on; a test set's are found here)."""
        bad = self.fill(paths, workers)
        if bad:
            raise unreadable(bad)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.rglob("*.npy")) if self.dir.is_dir() else 0


def unreadable(bad: list[str]) -> UserError:
    """The one sentence for images that cannot be decoded where none may be dropped (a test set's)."""
    return UserError(f"cannot read image {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                     + "; replace or remove the files (for training images, data.bad_images=skip with "
                     "data.check_images=true drops them)")


def image_cache(cfg: Config, train: bool) -> ImageCache | None:
    """The cache a training (train=True) or evaluation pipeline of this config reads, or None when data.cache is off."""
    return ImageCache(cache_root(cfg), transform_side(cfg.aug, train), cfg.data.dicom_window) if cfg.data.cache else None
