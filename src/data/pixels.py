"""Pixel tables (data.layout=pixels): each row of a table holds one image's pixels.

Digit Recognizer and Kannada-MNIST ship `label,pixel0..pixel783` (data.pixel_prefix, reshaped to
data.pixel_shape [28, 28]); Statoil ships JSON records whose list columns (data.pixel_cols
[band_1, band_2]) hold 75x75 floats each, stacked as channels. The rows are written once as .npy
files under `<cache>/pixels/<key>/` (key: the sha1 of the table's bytes and of how it is read),
with `rows.csv`, the table's other columns and each row's file, written last: a second run reads
rows.csv, an edited table gets a new folder. From then on the pipeline sees ordinary .npy paths
(src.data.arrays): integer pixels within 0..255 are stored as uint8 (a grayscale photo), any
other values as float64, exactly as the table holds them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.config import DataCfg
from src.core.progress import progress
from src.core.utils import UserError, atomic_save, atomic_save_npy


def _pixel_columns(columns: list[str], cfg: DataCfg, path: Path) -> list[str]:
    """The columns <prefix>0, <prefix>1, ... in row-major order; none, or a gap, stops in one sentence."""
    pattern = re.compile(re.escape(cfg.pixel_prefix) + r"(\d+)$")
    found = sorted((int(m.group(1)), c) for c in columns if (m := pattern.match(c)))
    if not found:
        raise UserError(f"{path} has no pixel columns {cfg.pixel_prefix}0, {cfg.pixel_prefix}1, ... (data.pixel_prefix "
                        f"'{cfg.pixel_prefix}'); its columns are {columns[:8]}: set data.pixel_prefix")
    if [n for n, _ in found] != list(range(len(found))):
        gap = next(i for i, (n, _) in enumerate(found) if n != i)
        raise UserError(f"{path} has pixel columns {cfg.pixel_prefix}0..{cfg.pixel_prefix}{found[-1][0]} with "
                        f"{cfg.pixel_prefix}{gap} missing; every pixel needs its column")
    return [c for _, c in found]


def _shape(cfg: DataCfg, values: int, channels: int, path: Path, what: str) -> tuple[int, ...]:
    """data.pixel_shape as (H, W, C), checked against a row's `values`."""
    shape = tuple(cfg.pixel_shape) + (() if len(cfg.pixel_shape) == 3 else (channels,))
    if int(np.prod(shape)) != values:
        raise UserError(f"{path} has {values} pixel values per row ({what}) but data.pixel_shape {cfg.pixel_shape} "
                        f"holds {int(np.prod(shape))}; set data.pixel_shape to a shape of {values} values"
                        + (f", e.g. [{int(np.sqrt(values))}, {int(np.sqrt(values))}]"
                           if int(np.sqrt(values)) ** 2 == values else ""))
    return shape


def _read_table(path: Path, cfg: DataCfg) -> tuple[pd.DataFrame, np.ndarray]:
    """(the other columns as text, the pixels (rows, H, W, C)) of a .csv or a .json of records."""
    if path.suffix.lower() == ".json":
        return _read_records(path, cfg)
    header = list(pd.read_csv(path, nrows=0).columns)
    cols = _pixel_columns(header, cfg, path)
    other = [c for c in header if c not in set(cols)]
    df = pd.read_csv(path, dtype={c: str for c in other}, keep_default_na=False)
    try:
        pixels = df[cols].to_numpy(dtype=np.float64)
    except ValueError:
        raise UserError(f"{path} has pixel values that are not numbers in {cfg.pixel_prefix} columns; fix the "
                        "table") from None
    return df[other], pixels.reshape((len(df),) + _shape(cfg, len(cols), 1, path, f"{cols[0]}..{cols[-1]}"))


def _read_records(path: Path, cfg: DataCfg) -> tuple[pd.DataFrame, np.ndarray]:
    try:
        records = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not JSON ({e}); it must be a list of records") from None
    df = pd.DataFrame(records)
    cols = cfg.pixel_cols or []
    missing = [c for c in cols if c not in df.columns]
    if not cols or missing:
        raise UserError(f"{path} has no list columns {missing or '(data.pixel_cols is null)'}; its columns are "
                        f"{list(df.columns)[:8]}: set data.pixel_cols to the columns holding the pixels")
    lengths = {len(v) for c in cols for v in df[c]}
    if len(lengths) != 1:
        raise UserError(f"{path}: the lists of {cols} hold {sorted(lengths)[:4]} values; every image needs as many")
    shape = _shape(cfg, lengths.pop() * len(cols), len(cols), path, f"{len(cols)} columns {cols}")
    pixels = np.stack([np.asarray(df[c].tolist(), dtype=np.float64) for c in cols], -1)  # (rows, H*W, C)
    other = df.drop(columns=cols).astype(str)
    return other, pixels.reshape((len(df),) + shape)


def _stored(pixels: np.ndarray) -> np.ndarray:
    """uint8 when every value is an integer within 0..255 (a grayscale or RGB photo), else the values as they are."""
    exact = np.all((pixels >= 0) & (pixels <= 255) & (pixels == np.round(pixels)))
    return pixels.astype(np.uint8) if exact else pixels


def _key(path: Path, cfg: DataCfg, id_col: str) -> str:
    h = hashlib.sha1(json.dumps([cfg.pixel_prefix, cfg.pixel_shape, cfg.pixel_cols, id_col]).encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def pixel_rows(path: Path, cfg: DataCfg, cache: Path, id_col: str) -> pd.DataFrame:
    """The table's non-pixel columns as text, `id_col` (the 1-based row number where the table has
    none) and `path`, each row's .npy, materialised once under `cache`/pixels/."""
    if not path.is_file():
        raise UserError(f"pixel table {path} does not exist; copy the competition files into {path.parent} or set "
                        "data.train_csv / data.test_csv")
    folder = cache / "pixels" / f"{path.stem}-{_key(path, cfg, id_col)}"
    index = folder / "rows.csv"
    if index.is_file():
        return pd.read_csv(index, dtype=str, keep_default_na=False)
    other, pixels = _read_table(path, cfg)
    pixels = _stored(pixels)
    files = [str(folder / f"{i}.npy") for i in range(len(other))]
    for f, img in progress(zip(files, pixels), total=len(files), desc=f"writing {path.name}'s pixels"):
        atomic_save_npy(f, img)
    rows = other.assign(path=files)
    if id_col not in rows:
        rows.insert(0, id_col, [str(i + 1) for i in range(len(rows))])
    atomic_save(index, lambda tmp: rows.to_csv(tmp, index=False))  # last: a folder without it is unfinished
    return rows
