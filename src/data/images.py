"""Reading any image file into an RGB uint8 array, and finding the files that cannot be decoded."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from src.core.progress import progress
from src.core.utils import MissingDecoder, UserError
from src.data.arrays import ARRAY_EXTS, read_array

_DIGESTS: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> sha1 of the bytes, this process only


def content_sha1(path: str | Path) -> str:
    """The sha1 of a file's bytes: what the image and prediction caches key an image on, so a
    replaced image is never served from them whatever metadata the replacement keeps. Read once
    per process: the digest is remembered under the file's full status (inode and change time
    included, which no replacement keeps), so an epoch or a TTA pass does not read the file again."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"cannot read image {path} ({e.strerror}); replace or remove the file") from None
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _DIGESTS[key] = h.hexdigest()
    return digest


DICOM_EXTS = (".dcm", ".dicom")


def read_image(path: str | Path, dicom_window: tuple[float, float] | None = None) -> np.ndarray:
    """Read any image file into an HxWx3 uint8 RGB array, or an .npy array as HxWxC (src.data.arrays:
    uint8 kept, any other dtype float32).

    Handles grayscale, RGBA/LA and palette PNGs, 16-bit PNGs (scaled to 8 bits), CMYK JPEGs,
    EXIF orientation and DICOM (src.data.dicom; `dicom_window`, data.dicom_window, overrides its
    window). Raises UserError naming the file when it cannot be decoded.
    """
    if Path(path).suffix.lower() in ARRAY_EXTS:
        return read_array(path)
    if Path(path).suffix.lower() in DICOM_EXTS:
        from src.data.dicom import read_dicom  # pydicom only where a DICOM is read: --help stays fast

        return read_dicom(path, dicom_window)
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


def find_bad_images(paths: list[str], workers: int = 4, cache=None, dicom_window=None, **fill) -> list[str]:
    """Decode every image once (in threads) and return the paths that fail. With an ImageCache,
    the same pass fills it (images already cached decoded fine before); `fill` goes to its fill."""
    if cache is not None:
        return cache.fill(paths, workers, desc="checking and caching images", **fill)

    def ok(p: str) -> bool:
        try:
            read_image(p, dicom_window)
            return True
        except UserError as e:
            if isinstance(e, MissingDecoder):
                raise
            return False

    with ThreadPoolExecutor(max(1, workers)) as pool:
        good = list(progress(pool.map(ok, paths), total=len(paths), desc="checking images"))
    return [p for p, g in zip(paths, good) if not g]
