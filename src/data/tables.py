"""Competition tables: train.csv or an ImageFolder tree, the sample submission, the class list, bad images dropped."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.config import Config, DataCfg, require_competition
from src.core.tasks import SPACE_IN_TAG, TASKS, canonical_tags, join_tags
from src.core.utils import UserError, atomic_write_text, counted
from src.data.answers import answer_ids, check_answers, test_images
from src.data.coco import coco_test_paths, coco_train_table
from src.data.image_store import store_paths
from src.data.images import find_bad_images
from src.data.loaders import resolve_workers
from src.data.pixels import pixel_rows


class ImageIndex:
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
    root = Path(require_competition(cfg))
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
    index = ImageIndex(image_dir, exts)
    paths = [index.find(i) for i in df[id_col]]
    missing = [i for i, p in zip(df[id_col], paths) if p is None]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(
            f"{counted(len(missing), what + ' id')} {'has' if len(missing) == 1 else 'have'} no image file in {image_dir} (tried extensions {exts}): {shown}; "
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
        raise UserError(f"{path} has {counted(len(empty), 'row')} without a label (first at row {empty[0] + 2}); fill or drop them")
    na = raw.index[stripped.isin(NA_LIKE)].tolist()
    if na and na_labels == "error":
        raise UserError(f"{path} has {len(na)} labels that read as missing values (e.g. '{stripped[na[0]]}' at row "
                        f"{na[0] + 2}); fix or drop those rows, or set data.na_labels=keep to train them as a class")
    return raw.assign(**{col: stripped})


def looks_like_tag_lists(labels: pd.Series) -> bool:
    """Whether a label column holds lists of tags (Planet's "clear primary water", iMet's
    "13 405 896") rather than one class per image: most labels hold several words, a word recurs
    in at least three different combinations, and some image's words are a strict part of
    another's. Class names with spaces ("Common wheat", "Common Chickweed") meet the first test only."""
    words = [frozenset(v.split()) for v in labels.astype(str)]
    if not words or sum(len(w) > 1 for w in words) * 2 < len(words):
        return False
    combos = sorted(set(words), key=len)
    counts: dict[str, int] = {}
    for c in combos:
        for w in c:
            counts[w] = counts.get(w, 0) + 1
    if max(counts.values()) < 3:
        return False
    return any(a < b for i, a in enumerate(combos) for b in combos[i + 1:])


def _refuse_tag_lists(labels: pd.Series, path: Path, col: str) -> None:
    if looks_like_tag_lists(labels):
        several = int((labels.str.split().str.len() > 1).sum())
        raise UserError(f"{path}: the labels of {col} look like lists of tags ({several} of {len(labels)} hold several "
                        f"words, e.g. '{labels[labels.str.split().str.len().idxmax()]}'), which a one-class-per-image "
                        "task would learn as one class per tag combination; set data.task=multilabel (tags split "
                        "by data.label_sep)")


def _label_col_names(columns: list[str], cfg: DataCfg) -> list[str]:
    """data.label_cols as column names: the list, or with `all` every column but the id and group."""
    return [c for c in columns if c not in (cfg.id_col, cfg.group_col)] if cfg.label_cols == "all" else cfg.label_cols


def label_columns(cfg: DataCfg) -> list[str]:
    """The labels train.csv declares as 0/1 columns (data.label_cols), positive in an image or not
    (the class list keeps them all: the submission needs every column); [] for a tags column."""
    if not cfg.label_cols:
        return []
    return _label_col_names(list(pd.read_csv(require_data_dir(cfg) / cfg.train_csv, nrows=0).columns), cfg)


def _zero_one_columns(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> tuple[list[str], np.ndarray]:
    """(the data.label_cols names, their values as a bool matrix (N, L)), every cell 0 or 1."""
    cols = _label_col_names(list(raw.columns), cfg)
    missing = [c for c in cols if c not in raw.columns]
    if missing:
        raise UserError(f"{path} has no columns {missing[:5]} (data.label_cols); its columns are {list(raw.columns)}")
    values = raw[cols].apply(lambda s: s.str.strip())
    bad = sorted(set(values.to_numpy().ravel()) - {"0", "1", "0.0", "1.0"})
    if bad:
        raise UserError(f"{path}: data.label_cols must hold 0 or 1, and they hold {bad[:5]}; list only the label "
                        "columns in data.label_cols")
    return cols, values.isin(["1", "1.0"]).to_numpy()


def _one_hot_labels(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> list[str]:
    """Each image's class from one-hot columns (data.label_cols under a one-class task): the name of
    its one column holding 1. A row with several 1s is a multi-label image, one without any has no class."""
    cols, on = _zero_one_columns(raw, cfg, path)
    ones = on.sum(1)
    bad = np.flatnonzero(ones != 1)
    if len(bad):
        several = int((ones > 1).sum())
        fix = ("set data.task=multilabel, since images hold several labels" if several else
               "give each row its class, or drop the rows")
        raise UserError(f"{path}: data.label_cols are one-hot under data.task={cfg.task} (exactly one 1 a row), and "
                        f"{counted(len(bad), 'row')} {'is' if len(bad) == 1 else 'are'} not (first at row {bad[0] + 2}, "
                        f"with {ones[bad[0]]} ones; {several} with several); {fix}")
    return [cols[j] for j in on.argmax(1)]


def _multilabel_labels(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> list[str]:
    """Each image's labels as canonical tags (sorted, space-separated; "" for none), from a tags
    column split by data.label_sep or from one 0/1 column per label (data.label_cols)."""
    if cfg.label_cols:
        cols, on = _zero_one_columns(raw, cfg, path)
        odd = [c for c in cols if not c.strip() or SPACE_IN_TAG in c]
        if odd:
            raise UserError(f"{path}: label columns {odd[:3]} are blank or hold '{SPACE_IN_TAG}', which labels with "
                            "spaces are kept with; rename them")
        return [join_tags(c for c, v in zip(cols, row) if v) for row in on]
    tags = raw[cfg.label_col].astype(str)
    dotted = tags[tags.str.contains(SPACE_IN_TAG, regex=False)]
    if len(dotted):
        raise UserError(f"{path}: {cfg.label_col} values hold '{SPACE_IN_TAG}' (e.g. '{dotted.iloc[0]}'), which labels "
                        "with spaces are kept with; replace it in those tags")
    out = canonical_tags(tags, cfg.label_sep)
    _check_separator(tags, out, cfg, path)
    return out


LIKELY_SEPARATORS = (",", ";", "|")


def _check_separator(tags: pd.Series, split: list[str], cfg: DataCfg, path: Path) -> None:
    """Tags written with another separator than data.label_sep: most of them hold a likely separator,
    or the split gives (nearly) one label per image (`6,9` read as the label '6,9')."""
    filled = tags[tags.str.strip() != ""]
    for sep in (s for s in LIKELY_SEPARATORS if s != cfg.label_sep.strip()):
        share = filled.str.contains(sep, regex=False).mean() if len(filled) else 0.0
        if share > 0.5:
            raise UserError(f"{path}: {share:.0%} of the {cfg.label_col} values hold '{sep}' (e.g. "
                            f"'{filled[filled.str.contains(sep, regex=False)].iloc[0]}'), and data.label_sep is "
                            f"'{cfg.label_sep}'; set data.label_sep='{sep}'")
    labels = {t for value in split for t in value.split()}
    if len(split) >= 20 and len(labels) > 0.5 * len(split):
        raise UserError(f"{path}: the {cfg.label_col} values split by data.label_sep '{cfg.label_sep}' into "
                        f"{len(labels)} labels for {len(split)} images, nearly one label per image (e.g. "
                        f"'{sorted(labels)[0]}'); set data.label_sep to the character between the tags")


def _image_files(img_root: Path, exts: list[str], layout: str) -> list[Path]:
    if not img_root.is_dir():
        raise UserError(f"image folder {img_root} does not exist; copy the training images there or set data.image_dir "
                        f"(data.layout={layout})")
    exts = [e.lower() for e in exts]
    return [p for p in sorted(img_root.rglob("*")) if p.suffix.lower() in exts and p.is_file()]


def _imagefolder_table(img_root: Path, exts: list[str]) -> pd.DataFrame:
    """train/<class>/<image>: the folder names the class."""
    files = _image_files(img_root, exts, "imagefolder")
    rows = [(p.relative_to(img_root).with_suffix("").as_posix(), p.relative_to(img_root).parts[0], str(p))
            for p in files if len(p.relative_to(img_root).parts) > 1]
    if not rows:
        raise UserError(f"{img_root} holds no class folders with images; expected {img_root}/<class>/<image>")
    return pd.DataFrame(rows, columns=["id", "label", "path"])


def _filename_table(img_root: Path, exts: list[str], pattern: str) -> pd.DataFrame:
    """train/cat.0.jpg: data.label_pattern's group, searched in the file name, is the label."""
    regex = re.compile(pattern)
    files = _image_files(img_root, exts, "filename")
    found = [(p, regex.search(p.name)) for p in files]
    unmatched = [p.name for p, m in found if m is None or not m.group(1)]
    if not files or unmatched:
        shown = ", ".join(unmatched[:5]) or f"no image files ({', '.join(exts)})"
        raise UserError(f"{len(unmatched)} of {len(files)} files in {img_root} have no label by data.label_pattern "
                        f"'{pattern}' ({shown}); fix the pattern or move those files out")
    return pd.DataFrame([(p.relative_to(img_root).with_suffix("").as_posix(), m.group(1), str(p)) for p, m in found],
                        columns=["id", "label", "path"])


def _labelled(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> pd.DataFrame:
    """A training table's id, label and group columns checked, its labels read as the task's form."""
    cols = {"data.id_col": cfg.id_col} | ({} if cfg.label_cols else {"data.label_col": cfg.label_col})
    if cfg.group_col:
        cols["data.group_col"] = cfg.group_col
    _require_cols(raw, cols, path)
    raw = LABEL_READERS[TASKS[cfg.task].label_form](raw, cfg, path)
    dup = raw[cfg.id_col][raw[cfg.id_col].duplicated()].tolist()
    if dup:
        raise UserError(f"{path} lists {counted(len(dup), 'id')} twice (e.g. {dup[:3]}); each image must appear once")
    return raw


def _named(df: pd.DataFrame, cfg: DataCfg, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    df = df.rename(columns={cfg.id_col: "id", cfg.label_col: "label"})
    if cfg.group_col:
        df = df.rename(columns={cfg.group_col: "group"})
    return df[["id", "label", "path"] + (["group"] if cfg.group_col else []) + list(extra)]


def _image_paths(df: pd.DataFrame, cfg: DataCfg, root: Path, cache: Path, train: bool) -> pd.DataFrame:
    """`df` with each id's image file: from the HDF5 container when one is set, else the image folder."""
    store = cfg.image_store if train else cfg.test_image_store
    what = "training" if train else "test"
    if store:
        return df.assign(path=store_paths(root / store, df[cfg.id_col].tolist(), cache, what))
    return _attach_paths(df, cfg.id_col, root / (cfg.image_dir if train else cfg.test_dir), cfg.image_exts, what)


def _csv_table(cfg: DataCfg, root: Path, cache: Path) -> pd.DataFrame:
    path = root / cfg.train_csv
    raw = _labelled(_read_csv(path, "training table"), cfg, path)
    answers = {"answer": answer_ids(raw, cfg, path)} if cfg.answer_id else {}  # several images per answer
    df = _named(_image_paths(raw, cfg, root, cache, train=True).assign(**answers), cfg, tuple(answers))
    if answers:
        check_answers(df, path)
    return df


def _pixel_table(cfg: DataCfg, root: Path, cache: Path) -> pd.DataFrame:
    path = root / cfg.train_csv
    return _named(_labelled(pixel_rows(path, cfg, cache, cfg.id_col), cfg, path), cfg)


# data.layout -> the training table (id, label, path[, group]) of the competition folder
LAYOUTS = {
    "csv": _csv_table,
    "pixels": _pixel_table,
    "imagefolder": lambda cfg, root, cache: _imagefolder_table(root / cfg.image_dir, cfg.image_exts),
    "filename": lambda cfg, root, cache: _filename_table(root / cfg.image_dir, cfg.image_exts, cfg.label_pattern),
    "coco": lambda cfg, root, cache: coco_train_table(root / cfg.annotations, TASKS[cfg.task].label_form),
}


def _arrays_root(cfg: DataCfg, cache: Path | None) -> Path:
    """Where pixel rows and container images are written as files: the image cache's folder."""
    return Path(cache) if cache is not None else Path(cfg.cache_dir or "outputs/cache")


def load_train_table(cfg: DataCfg, cache: Path | None = None) -> pd.DataFrame:
    """Training table with columns id, label (str), path and, when configured, group. `cache`
    (image_cache.cache_root) is where pixel tables and HDF5 containers become files."""
    df = LAYOUTS[cfg.layout](cfg, require_data_dir(cfg), _arrays_root(cfg, cache))
    if cfg.group_col and "group" not in df:
        raise UserError("data.group_col works only with data.layout=csv or pixels; set it to null")
    return df.reset_index(drop=True)


def sample_id_col(cfg: DataCfg) -> str:
    """The sample submission's id column: data.answer_col where it names answers, else data.id_col."""
    return cfg.answer_col or cfg.id_col


def _pixel_test(cfg: DataCfg, root: Path, sample: pd.DataFrame, cache: Path) -> pd.DataFrame:
    """The test pixel table's rows in the sample submission's order; ids either has that the other
    lacks stop the run (a table without an id column is numbered 1, 2, ... as Digit Recognizer's ImageId)."""
    path = root / cfg.test_csv
    rows = pixel_rows(path, cfg, cache, cfg.id_col)
    ids, wanted = set(rows[cfg.id_col]), sample[cfg.id_col].tolist()
    absent, extra = [i for i in wanted if i not in ids], len(ids - set(wanted))
    if absent or extra or len(rows) != len(wanted):
        numbered = rows[cfg.id_col].tolist() == [str(i + 1) for i in range(len(rows))]
        how = f"its rows numbered 1..{len(rows)}" if numbered else f"its {cfg.id_col} column"
        raise UserError(f"{path} holds {counted(len(rows), 'test row')} and {cfg.sample_submission} "
                        f"{counted(len(wanted), 'id')}, and {counted(len(absent), 'sample id')} (e.g. {absent[:3]}) "
                        f"{'is' if len(absent) == 1 else 'are'} not among the table's ids ({how}); give the test "
                        "table and the sample submission of the same images")
    return sample[[cfg.id_col]].merge(rows[[cfg.id_col, "path"]], on=cfg.id_col, how="left")


def load_test_table(cfg: DataCfg, cache: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test table with id and path in sample_submission order, the sample submission itself). With
    data.answer_id the rows are the images of data.test_csv, with their `answer`, grouped in the sample's order."""
    root = require_data_dir(cfg)
    path = root / cfg.sample_submission
    sample = _read_csv(path, "sample submission")
    id_key = "data.answer_col" if cfg.answer_col else "data.id_col"
    _require_cols(sample, {id_key: sample_id_col(cfg)}, path)
    if cfg.answer_id:
        images = test_images(sample, sample_id_col(cfg), cfg, root)
        return _attach_paths(images, "id", root / cfg.test_dir, cfg.image_exts, "test"), sample
    if cfg.layout == "pixels":
        test = _pixel_test(cfg, root, sample, _arrays_root(cfg, cache))
    elif cfg.test_annotations:
        test = sample[[cfg.id_col]].assign(path=coco_test_paths(root / cfg.test_annotations, sample[cfg.id_col],
                                                                cfg.id_col, path))
    else:
        test = _image_paths(sample[[cfg.id_col]], cfg, root, _arrays_root(cfg, cache), train=False)
    return test.rename(columns={cfg.id_col: "id"}).reset_index(drop=True), sample


def _one_label(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> pd.DataFrame:
    if cfg.label_cols:  # one-hot columns: the class is the column holding 1
        return raw.assign(**{cfg.label_col: _one_hot_labels(raw, cfg, path)})
    _refuse_tag_lists(raw[cfg.label_col], path, cfg.label_col)
    return _clean_labels(raw, cfg.label_col, path, cfg.na_labels)


def _tag_labels(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> pd.DataFrame:
    return raw.assign(**{cfg.label_col: _multilabel_labels(raw, cfg, path)})


def _value_labels(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> pd.DataFrame:
    """A regression's targets: every label a finite number inside data.target_range (kept as its text)."""
    raw = _clean_labels(raw, cfg.label_col, path, "error")
    values = pd.to_numeric(raw[cfg.label_col], errors="coerce")
    lo, hi = cfg.target_range
    bad = raw.index[~values.between(lo, hi) | ~np.isfinite(values.fillna(np.inf))].tolist()
    if bad:
        value = raw[cfg.label_col][bad[0]]
        why = "is not a number" if pd.isna(values[bad[0]]) or not np.isfinite(values[bad[0]]) else \
            f"is outside data.target_range [{lo:g}, {hi:g}]"
        raise UserError(f"{path} row {bad[0] + 2}: {cfg.label_col} '{value}' {why} ({counted(len(bad), 'such row')}); "
                        "fix those labels, or widen data.target_range")
    return raw


# Task.label_form -> the training table with its label column read as that form
LABEL_READERS = {"one": _one_label, "tags": _tag_labels, "value": _value_labels}


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
        bad = find_bad_images(paths, workers=max(2, resolve_workers(cfg.loader)), cache=images,
                              dicom_window=cfg.data.dicom_window, **fill)
        if cache is not None and (not bad or cfg.data.bad_images == "skip"):
            write = lambda: atomic_write_text(cache, json.dumps({"key": key, "bad": bad}))  # noqa: E731
            write() if defer is None else defer.append(write)
    if not bad:
        return df
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    if cfg.data.bad_images == "error":
        raise UserError(
            f"{counted(len(bad), 'image')} cannot be decoded: {shown}; replace {'it' if len(bad) == 1 else 'them'}, or set data.bad_images=skip to drop them"
        )
    warnings.warn(f"skipping {counted(len(bad), 'unreadable image')}: {shown}", stacklevel=2)
    return df[~df["path"].isin(bad)].reset_index(drop=True)


def prob_columns(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]
