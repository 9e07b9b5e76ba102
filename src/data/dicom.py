"""DICOM files (RSNA, SIIM) read into the HxWx3 uint8 RGB array every other image reader gives.

The grey levels follow the DICOM display pipeline: stored values, then the modality transform
(RescaleSlope / RescaleIntercept, or a Modality LUT), then the VOI transform (a VOI LUT sequence,
or WindowCenter / WindowWidth with its VOILUTFunction: LINEAR, LINEAR_EXACT or SIGMOID; the
first window when the file lists several), scaled to 0..255, and MONOCHROME1 inverted (its 0 is
white). `data.dicom_window: [center, width]` replaces the file's VOI transform with that LINEAR
window; without either, the image's own minimum and maximum span 0..255. Colour DICOMs come as
RGB (pydicom converts YBR) and 16-bit colour is min-max scaled.

Imported only by src.data.images when a DICOM file is read, so commands start without pydicom.
"""

from __future__ import annotations

import struct

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders.base import get_decoder

from src.core.utils import MissingDecoder, UserError

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(path, window: tuple[float, float] | None = None) -> np.ndarray:
    """The RGB uint8 image of a DICOM file; `window` (center, width) overrides the file's VOI transform."""
    ds = _open(path)
    if not any(t in ds for t in PIXEL_TAGS):
        raise UserError(f"cannot read image {path}: the DICOM file holds no pixel data (a report or a "
                        "presentation state, not an image); remove it from the table or the image folder")
    _require_decoder(path, ds)
    try:
        arr = ds.pixel_array
    except (ValueError, RuntimeError, AttributeError, KeyError, struct.error) as e:
        raise UserError(f"cannot read image {path} (its DICOM pixel data cannot be decoded: {e}); "
                        "replace or remove the file") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UserError(f"cannot read image {path}: it is a DICOM of {frames} frames; export the frame "
                        "to train on as its own file")
    if ds.get("SamplesPerPixel", 1) != 1:
        return _minmax(arr) if arr.dtype != np.uint8 else np.ascontiguousarray(arr)
    grey = _voi(apply_modality_lut(arr, ds), ds, window)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255.0 - grey
    out = np.clip(grey, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out[..., None], 3, axis=2))


def _open(path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        raise UserError(f"cannot read image {path}: it is not a DICOM file (no 'DICM' header); replace or "
                        "remove the file, or give it its real extension") from None
    except (OSError, EOFError, ValueError, KeyError, struct.error) as e:
        raise UserError(f"cannot read image {path} (a damaged DICOM file: {e}); replace or remove the file") from None


def _require_decoder(path, ds: pydicom.Dataset) -> None:
    """MissingDecoder naming the file and what to install when its transfer syntax cannot be decoded here."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise MissingDecoder(f"cannot read image {path}: its pixel data is compressed as {uid.name}, which "
                             "pydicom cannot decode; convert the files to an uncompressed DICOM or PNG "
                             "(e.g. gdcmconv --raw)") from None
    if not decoder.is_available:
        raise MissingDecoder(f"cannot read image {path}: its pixel data is compressed as {uid.name} and no "
                             f"installed plugin decodes it; install one of: {'; '.join(decoder.missing_dependencies)}")


def _voi(values: np.ndarray, ds: pydicom.Dataset, window: tuple[float, float] | None) -> np.ndarray:
    """Grey levels 0..255 (float) from modality values: the config's window, the file's VOI LUT or window, or min-max."""
    if window is not None:
        return _window(values, *window, "LINEAR")
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi_lut(values, ds).astype(np.float64) * (255.0 / (2 ** bits - 1))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                       str(ds.get("VOILUTFunction", "LINEAR")).upper())
    return _minmax(values)[..., 0].astype(np.float64)


def _first(v) -> float:
    return float(v[0]) if isinstance(v, MultiValue) else float(v)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The DICOM (PS3.3 C.11.2.1.2) window onto 0..255: LINEAR, LINEAR_EXACT or SIGMOID."""
    x = np.asarray(x, dtype=np.float64)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        lo, span = center - width / 2, width
    else:  # LINEAR: the standard's half-pixel offsets; a width of 1 is a threshold
        lo, span = center - 0.5 - (width - 1) / 2, width - 1
    if span <= 0:
        return np.where(x > lo, 255.0, 0.0)
    return np.clip((x - lo) / span, 0.0, 1.0) * 255.0


def _minmax(arr: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from any numeric image, its own minimum to maximum spanning 0..255 (a flat image is black)."""
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    out = ((a - lo) / (hi - lo or 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2))
