"""A downloaded competition folder read as config keys, each with the evidence it rests on
(python -m src.init).

A Survey walks the folder once and runs DETECTORS in order; each detector reads one question
(archives not extracted, the sample submission, the layout, the id and label columns, the task,
the image folders, the groups, the metric) and sets keys through `Survey.set`, saying what it saw.
A new kind of competition is one detector (or one entry in LAYOUTS or READINGS), not a branch in
the others. Where two readings are both plausible, `Survey.choose` stops with one sentence naming
both and the key that decides, unless --guess lets it pick the first and say so. Keys given on the
command line win over every detector and are said as given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from src.core.tasks import TASKS, join_tags, make_task
from src.core.utils import UserError, counted
from src.data.coco import read_annotations
from src.data.tables import LIKELY_SEPARATORS, looks_like_tag_lists
from src.kaggle.competitions import Known, known

ARCHIVES = (".zip", ".7z", ".rar", ".tar", ".tgz", ".gz")
SAMPLE = re.compile(r"sample.*submission.*\.csv$", re.I)
NOT_TRAIN = re.compile(r"sample|submission|solution|^test", re.I)  # tables that are not the training table
TEST_TABLE = re.compile(r"test([._-].*)?\.csv$", re.I)
STORE_SUFFIXES = {".hdf5", ".h5", ".hdf", ".he5"}  # HDF5 containers of images keyed by id (ISIC 2024)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".npy", ".gif"}
# the columns several images share a value of when they come from one patient, study or individual
GROUP_NAME = re.compile(r"patient|subject|study|case|individual|series|group|owner", re.I)
MAX_GRADES = 30  # integer labels with more distinct values than this are a target, not grades or classes
ID_PROBE = 400  # ids tried against the files when looking for an image folder
NEW_LABEL = re.compile(r"new[_ -][A-Za-z]+", re.I)  # the label of the unseen: new_whale, new_individual
MIN_PIXELS = 16  # a block of numbered columns, or a list field, of at least this many values is pixels


@dataclass
class Survey:
    """What has been read of one competition folder, and the keys decided so far."""

    root: Path
    slug: str
    given: dict[str, Any]  # dotted key -> value, from the command line
    guess: bool = False
    files: list[Path] = field(default_factory=list)  # every file, relative to root
    keys: dict[str, tuple[Any, str]] = field(default_factory=dict)  # dotted key -> (value, evidence)
    said: list[str] = field(default_factory=list)  # what was seen that sets no key
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # train, sample, test (as text)
    labels: pd.Series | None = None  # the training labels as the task will read them
    names: bool = False  # the labels are identifiers (COCO category ids): never grades or a target
    known: tuple[str, Known] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # the recipe's values, dotted
    per_row: pd.Series | None = None  # 0/1 label columns: how many are 1 in each row
    photo: bool | None = None  # whether the training images are 3-channel uint8 photos (None: not read yet)

    def set(self, key: str, value: Any, why: str) -> Any:
        """Decide `key` (a given value wins) and keep the evidence for its comment."""
        if key in self.given:
            value, why = self.given[key], "given on the command line"
        self.keys[key] = (value, why)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.given:
            return self.given[key]
        return self.keys[key][0] if key in self.keys else default

    def choose(self, key: str, options: list[tuple[Any, str]], question: str) -> Any:
        """The one option, the given one, or with several: one sentence naming them and `key`
        (--guess: the first, said)."""
        if key in self.given or len(options) == 1:
            return self.set(key, *options[0])  # a given value wins inside set
        if not self.guess:
            raise UserError(f"{question}; set {key}=<value> on the command line to say which (or --guess to take "
                            f"{_shown(options[0][0])})")
        value, why = options[0]
        return self.set(key, value, f"{why} (--guess: chosen over {', '.join(_shown(o[0]) for o in options[1:])})")

    def path(self, rel: str) -> Path:
        return self.root / rel


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path} cannot be read as a CSV table ({str(e).splitlines()[0]}); fix or remove it") from None


# ---------------------------------------------------------------- the folder


def walk(s: Survey) -> None:
    """Every file under the folder; an archive not yet extracted stops here."""
    if not s.root.is_dir():
        raise UserError(f"{s.root} is not a folder; download the competition (kaggle competitions download -c "
                        f"<slug>) and unzip it into inputs/<slug>/, then pass that folder")
    s.files = sorted(Path(top, f).relative_to(s.root)  # a linked image folder is followed, as the tables follow it
                     for top, _, names in os.walk(s.root, followlinks=True) for f in names)
    if not s.files:
        raise UserError(f"{s.root} is empty; unzip the competition's files into it")
    for rel in s.files:
        stem = rel.name.split(".")[0]
        if rel.suffix.lower() in ARCHIVES and not (s.root / rel.parent / stem).exists() and \
                not any(f.stem == stem and f.suffix == ".csv" for f in s.files):
            raise UserError(f"{s.root / rel} is not extracted; unzip it where it lies (unzip -q {s.root / rel} -d "
                            f"{s.root / rel.parent}) and run again")


def sample_submission(s: Survey) -> None:
    """The sample submission: it fixes the test ids, the id column and the submission's columns."""
    found = [f for f in s.files if SAMPLE.search(f.name)]
    if not found and "data.sample_submission" not in s.given:
        raise UserError(f"{s.root} holds no sample submission (*sample*submission*.csv), which fixes the test ids "
                        "and the columns to write; set data.sample_submission=<file relative to the folder>")
    rel = s.set("data.sample_submission", found[0].as_posix() if found else None,
                f"the sample submission ({len(_read_table(s.path(found[0].as_posix()))):,} rows)"
                if found else "")
    s.tables["sample"] = _read_table(s.path(rel))
    if len(s.tables["sample"].columns) < 2:
        raise UserError(f"{s.path(rel)} has {len(s.tables['sample'].columns)} column; a sample submission holds an "
                        "id column and what to predict")
    # test.csv, else a table named test-... (ISIC 2024's test-metadata.csv): metadata, answers, pixels
    test = sorted((f for f in s.files if f.suffix.lower() == ".csv" and TEST_TABLE.match(f.name)),
                  key=lambda f: (f.name.lower() != "test.csv", len(f.parts), f.name))
    if test:
        s.set("data.test_csv", test[0].as_posix(), "the test table")
        s.tables["test"] = _read_table(s.root / test[0])


# ---------------------------------------------------------------- layouts: where the training labels are


def _coco(s: Survey) -> bool:
    """A COCO-style JSON (images, annotations, categories) as the training table; a JSON of images
    only beside it, under a name or folder saying test, lists the test images."""
    docs = {}
    for rel in (f for f in s.files if f.suffix.lower() == ".json"):
        try:
            docs[rel] = read_annotations(s.root / rel, ("images",))
        except UserError:
            continue
    train = [r for r, d in docs.items() if {"annotations", "categories"} <= set(d) and d["annotations"]]
    if not train:
        return False
    rel, doc = train[0], docs[train[0]]
    s.set("data.layout", "coco", f"{rel.as_posix()} holds images, annotations and categories "
                                 f"({len(doc['annotations']):,} annotations)")
    s.set("data.annotations", rel.as_posix(), "the training annotations")
    tests = [r for r, d in docs.items() if r != rel and "annotations" not in d and "test" in r.as_posix().lower()]
    if tests:
        s.set("data.test_annotations", tests[0].as_posix(), f"the test images' file names ({len(docs[tests[0]]['images']):,})")
    sample = s.tables["sample"]
    s.set("data.id_col", sample.columns[0], "the sample submission's id column (the test JSON's image ids)")
    s.set("data.label_col", sample.columns[1], "the sample submission's column: the category id")
    s.labels = pd.Series([str(a["category_id"]) for a in doc["annotations"]], dtype=str)
    s.names = True
    return True


def _training_table(s: Survey) -> Path | None:
    tables = [f for f in s.files if f.suffix.lower() == ".csv" and not NOT_TRAIN.search(f.name)]
    named = [f for f in tables if f.name.lower().startswith("train")]
    pool = named or tables
    if not pool:
        return None
    id_col = s.tables["sample"].columns[0]
    with_id = [f for f in pool if id_col in pd.read_csv(s.root / f, nrows=0).columns]
    return (with_id or pool)[0]


def _csv(s: Survey) -> bool:
    """A training table beside the images (train.csv, train_labels.csv, labels.csv, ...)."""
    rel = _training_table(s) if "data.train_csv" not in s.given else Path(s.given["data.train_csv"])
    if rel is None:
        return False
    s.set("data.layout", "csv", f"{rel.as_posix()} is a table")
    s.set("data.train_csv", rel.as_posix(), f"the training table ({len(_read_table(s.root / rel)):,} rows)")
    s.tables["train"] = _read_table(s.root / rel)
    answers(s)
    id_column(s)
    label_columns(s)
    return True


def _class_folders(s: Survey) -> list[Path]:
    """train/<class>/<image>: the folders (under a folder named train) that hold images directly."""
    parents = {f.parent for f in s.files if f.suffix.lower() in IMAGE_SUFFIXES and len(f.parts) >= 3
               and "train" in f.parts[0].lower()}
    return sorted(parents)


def _imagefolder(s: Survey) -> bool:
    folders = _class_folders(s)
    if len({p.parent for p in folders}) != 1 or len(folders) < 2:
        return False
    top = folders[0].parent
    s.set("data.layout", "imagefolder", f"{top.as_posix()}/ holds {len(folders)} folders of images, no table")
    s.set("data.image_dir", top.as_posix(), "the class folders' folder")
    s.labels = pd.Series([f.parent.name for f in s.files if f.parent in folders], dtype=str)
    return True


def _filename(s: Survey) -> bool:
    """train/cat.0.jpg: the word before the first dot or underscore of every training file name."""
    train = [f for f in s.files if f.suffix.lower() in IMAGE_SUFFIXES and "train" in f.parts[0].lower()]
    words = pd.Series([re.match(r"^([A-Za-z]+)[._]", f.name).group(1) if re.match(r"^([A-Za-z]+)[._]", f.name)
                       else "" for f in train], dtype=str)
    if not len(train) or (words == "").any() or words.nunique() < 2 or words.nunique() > len(words) / 10:
        return False
    s.set("data.layout", "filename", f"{counted(len(train), 'training file')} named <label>.<n> "
                                     f"({', '.join(sorted(words.unique())[:4])})")
    s.set("data.label_pattern", r"^([A-Za-z]+)[._]", "the word before the first dot or underscore")
    s.set("data.image_dir", train[0].parts[0], "the training files' folder")
    s.labels = words
    return True


def _pixel_block(columns: list[str]) -> tuple[str, int] | None:
    """(prefix, n): the largest block of columns <prefix>0..<prefix>n-1, when it could be an image's pixels."""
    numbered: dict[str, set[int]] = {}
    for c in columns:
        m = re.fullmatch(r"(.*?\D)(\d+)", c)
        if m:
            numbered.setdefault(m.group(1), set()).add(int(m.group(2)))
    blocks = [(prefix, len(n)) for prefix, n in numbered.items() if n == set(range(len(n))) and len(n) >= MIN_PIXELS]
    return max(blocks, key=lambda b: b[1]) if blocks else None


def _pixel_shape(s: Survey, values: int, channels: int, where: str) -> list[int]:
    """data.pixel_shape for `values` numbers a row (`channels` list columns stacked): square, or square x 3."""
    side = int(round((values / channels) ** 0.5))
    if side * side * channels == values:
        return s.set("data.pixel_shape", [side, side], f"{where} -> {side}x{side}"
                     + (f", {channels} channels" if channels > 1 else ""))
    rgb = int(round((values / 3) ** 0.5))
    if channels == 1 and rgb * rgb * 3 == values:
        return s.set("data.pixel_shape", [rgb, rgb, 3], f"{where} -> {rgb}x{rgb}x3, row-major")
    if "data.pixel_shape" in s.given:
        return s.set("data.pixel_shape", None, "")
    raise UserError(f"{where}, which is no square image; set data.pixel_shape=[H,W] (or [H,W,C]) to the shape of "
                    "one row's pixels")


def _photo_pixels(values) -> bool:
    """Whether pixel values are what a photo holds (integers within 0..255: read as grayscale uint8)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return bool(np.all((v >= 0) & (v <= 255) & (v == np.round(v))))


def _has_images(s: Survey) -> bool:
    """Whether the folder ships image files or containers: then numbered columns are metadata, not pixels."""
    return any(f.suffix.lower() in IMAGE_SUFFIXES | STORE_SUFFIXES for f in s.files)


def _pixels(s: Survey) -> bool:
    """Digit Recognizer, Kannada-MNIST: each row of the training table holds one image's pixels in
    columns pixel0..pixelN-1 (any prefix); the test table holds the same columns."""
    rel = _training_table(s) if "data.train_csv" not in s.given else Path(s.given["data.train_csv"])
    if rel is None or rel.suffix.lower() != ".csv" or _has_images(s):
        return False
    block = _pixel_block(list(pd.read_csv(s.root / rel, nrows=0).columns))
    if block is None:
        return False
    prefix, n = block
    s.set("data.layout", "pixels", f"{rel.as_posix()} has {n:,} columns {prefix}0..{prefix}{n - 1}: pixels a row")
    s.set("data.train_csv", rel.as_posix(), "the training table")
    s.set("data.pixel_prefix", prefix, "the pixel columns' prefix")
    _pixel_shape(s, n, 1, f"{n:,} pixel values a row")
    table = _read_table(s.root / rel)
    pixel_cols = [f"{prefix}{i}" for i in range(n)]
    s.tables["train"] = table.drop(columns=pixel_cols)
    s.photo = _photo_pixels(table[pixel_cols].head(50).apply(pd.to_numeric, errors="coerce").fillna(-1))
    _pixel_test(s, pixel_cols, "test table")
    return True


def _records(path: Path) -> pd.DataFrame | None:
    """A .json that is a list of records with list-valued fields (Statoil's band_1, band_2), else None."""
    import json

    if path.stat().st_size < 2 or path.read_bytes()[:1].lstrip() not in (b"[", b""):
        return None
    try:
        records = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records[:50]):
        return None
    return pd.DataFrame(records)


def _list_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if df[c].map(lambda v: isinstance(v, list) and len(v) >= MIN_PIXELS).all()]


def _pixel_records(s: Survey) -> bool:
    """Statoil: train.json, a list of records whose list fields (band_1, band_2) hold each image's
    channels; test.json alike."""
    if _has_images(s):
        return False
    found = [(f, df) for f in s.files if f.suffix.lower() == ".json" and not NOT_TRAIN.search(f.name)
             and (df := _records(s.root / f)) is not None and _list_columns(df)]
    if not found:
        return False
    rel, df = found[0]
    cols = _list_columns(df)
    lengths = {len(v) for c in cols for v in df[c]}
    if len(lengths) != 1:
        raise UserError(f"{s.root / rel}: the lists of {cols} hold {sorted(lengths)[:4]} values; every image needs "
                        "as many (data.pixel_cols)")
    s.set("data.layout", "pixels", f"{rel.as_posix()} is a list of {len(df):,} records with list fields "
                                   f"{', '.join(cols)}: pixels a record")
    s.set("data.train_csv", rel.as_posix(), "the training records")
    s.set("data.pixel_cols", cols, "each a channel of one image")
    _pixel_shape(s, lengths.pop() * len(cols), len(cols), f"{len(cols)} list(s) of {len(df[cols[0]][0]):,} values")
    s.tables["train"] = df.drop(columns=cols).astype(str)
    s.photo = len(cols) == 3 and _photo_pixels([v for c in cols for v in df[c].head(20).sum()])
    tests = [f for f in s.files if f.suffix.lower() == ".json" and f.name.lower().startswith("test")]
    if tests:
        test = _records(s.root / tests[0])
        if test is None or set(cols) - set(test.columns):
            raise UserError(f"{s.root / tests[0]} holds no records with the lists {cols}; give the test images as "
                            "the training ones")
        s.set("data.test_csv", tests[0].as_posix(), f"the test records ({len(test):,})")
        s.tables["test"] = test.drop(columns=cols).astype(str)
    _pixel_test(s, cols, "test records")
    return True


def _pixel_test(s: Survey, pixel_cols: list[str], what: str) -> None:
    """The id and label columns of a pixel table: the sample's id is a column of the test table, or
    (Digit Recognizer's ImageId) the 1-based row number of a test table without one."""
    test, sample = s.tables.get("test"), s.tables["sample"]
    if test is None:
        raise UserError(f"{s.root} holds no test table beside {s.get('data.train_csv')}; the test pixels are read "
                        "from data.test_csv: set it")
    if s.get("data.test_csv").endswith(".csv"):
        if set(pixel_cols) - set(test.columns):
            raise UserError(f"{s.root / s.get('data.test_csv')} lacks the training table's pixel "
                            f"columns ({pixel_cols[0]}..{pixel_cols[-1]}); give the test pixels in the same columns")
        s.tables["test"] = test = test.drop(columns=pixel_cols)
    col = sample.columns[0]
    if col in test.columns:
        s.set("data.id_col", col, f"the sample submission's id column, a column of the {what}")
    elif sample[col].tolist() == [str(i + 1) for i in range(len(test))]:
        s.set("data.id_col", col, f"the {what} {'have' if what.endswith('s') else 'has'} no {col}: the sample's ids are its rows "
                                f"numbered 1..{len(test):,}")
    else:
        raise UserError(f"the sample submission's {col} is not a column of the {what}, nor their rows numbered "
                        f"1..{len(test):,}; set data.id_col")
    label_columns(s)


LAYOUTS: tuple[Callable[[Survey], bool], ...] = (_coco, _pixel_records, _pixels, _csv, _imagefolder, _filename)


def layout(s: Survey) -> None:
    if not any(read(s) for read in LAYOUTS):
        shown = ", ".join(sorted({f.parts[0] + ("/" if len(f.parts) > 1 else "") for f in s.files})[:8])
        raise UserError(f"{s.root} has no training table, pixel table, COCO JSON, class folders or labelled file names "
                        f"(it holds {shown}); set data.layout and the keys it needs (docs/data-and-tasks.md)")


# ---------------------------------------------------------------- columns of the training table


def _answer_template(test: pd.DataFrame, asked: set[str]) -> str | None:
    """A column of the test table whose values are the sample's ids, or two joined by _ or -."""
    cols = [c for c in test.columns if test[c].nunique() < len(test)]  # an answer holds several images
    for c in cols:
        if set(test[c]) == asked:
            return c
    for a, b in ((a, b) for a in cols for b in cols if a != b):
        for sep in "_-":
            if set(test[a] + sep + test[b]) == asked:
                return f"{{{a}}}{sep}{{{b}}}"
    return None


def answers(s: Survey) -> None:
    """Several images per answer (RSNA mammography): the sample's ids are not images but a column of
    test.csv, or columns of it joined, as `prediction_id` is `{patient_id}_{laterality}`."""
    train, sample, test = s.tables["train"], s.tables["sample"], s.tables.get("test")
    col = sample.columns[0]
    if col in train.columns or test is None:
        return
    template = s.given.get("data.answer_id") or _answer_template(test, set(sample[col]))
    if template is None:
        return
    shared = [c for c in test.columns if c in train.columns and test[c].nunique() == len(test)]
    if not shared:
        raise UserError(f"the sample's {col} values are answers ({template}) of the images of test.csv, and no "
                        f"column of both tables names one image per row; set data.id_col")
    image_col = next((c for c in shared if "image" in c.lower()), shared[0])
    per = len(test) / max(sample[col].nunique(), 1)
    s.set("data.answer_id", template, f"the sample's {len(sample):,} {col} values are built so from test.csv's "
                                      f"{len(test):,} images ({per:.1f} an answer)")
    s.set("data.answer_col", col, "the sample submission's id column names answers")
    s.set("data.id_col", image_col, "one image per row in both train.csv and test.csv")


def id_column(s: Survey) -> None:
    """The id column: the sample submission's first column, which the training table shares."""
    train, sample = s.tables["train"], s.tables["sample"]
    if s.get("data.answer_id"):
        return
    col = sample.columns[0]
    if col not in train.columns and "data.id_col" not in s.given:
        raise UserError(f"the sample submission's id column {col} is not a column of {s.get('data.train_csv')} "
                        f"(its columns: {list(train.columns)[:8]}); set data.id_col to the column both share")
    s.set("data.id_col", col, "the id column the sample submission and the training table share")


def _candidates(s: Survey) -> list[str]:
    """Training columns that could be the label: not the id, not in test.csv, not unique per row."""
    train, test = s.tables["train"], s.tables.get("test")
    shared = set(test.columns) if test is not None else set()
    return [c for c in train.columns if c != s.get("data.id_col") and c not in shared
            and (train[c].nunique() < len(train) or pd.to_numeric(train[c], errors="coerce").notna().all())]


def label_columns(s: Survey) -> None:
    """The label: the sample's one column (or the training column whose values its columns are),
    or one 0/1 column per label when the sample holds several columns the table has."""
    train, sample = s.tables["train"], s.tables["sample"]
    cols = [c for c in sample.columns if c not in (s.get("data.id_col"), s.get("data.answer_col"))]
    if "data.label_cols" in s.given or (len(cols) > 1 and set(cols) <= set(train.columns)):
        s.set("data.label_cols", cols, f"the sample submission's {len(cols)} columns, 0/1 columns of the table")
        on = train[cols].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0.5
        s.labels = pd.Series([join_tags(c for c, v in zip(cols, row) if v) for row in on], dtype=str)
        s.per_row = pd.Series(on.sum(1))  # counted here: a column's name may hold spaces ("Common wheat")
        return
    if len(cols) > 1:
        matches = [c for c in train.columns if set(train[c]) == set(cols)]
        if not matches:
            raise UserError(f"the sample submission's {len(cols)} columns ({', '.join(cols[:4])}, ...) are neither "
                            f"columns nor the values of a column of {s.get('data.train_csv')}; set data.label_col")
        s.set("data.label_col", matches[0], f"its values are the sample submission's {len(cols)} columns")
    elif cols[0] in train.columns:
        s.set("data.label_col", cols[0], "the sample submission's column")
    else:
        options = [(c, f"a column of {s.get('data.train_csv')} that test.csv lacks") for c in _candidates(s)]
        if not options:
            raise UserError(f"{s.get('data.train_csv')} has no column that could hold the labels (the sample "
                            f"submission's is {cols[0]}); set data.label_col")
        s.choose("data.label_col", options, f"{s.get('data.train_csv')} has {len(options)} columns that could hold "
                                            f"the labels ({', '.join(o[0] for o in options)})")
    s.labels = train[s.get("data.label_col")].astype(str).str.strip()


# ---------------------------------------------------------------- the task: what one image's label is


@dataclass(frozen=True)
class Reading:
    task: str
    why: str
    keys: dict = field(default_factory=dict)


def _tags(labels: pd.Series, s: Survey) -> list[Reading]:
    for sep in (" ", *LIKELY_SEPARATORS):
        spaced = labels if sep == " " else labels.str.replace(sep, " ", regex=False)
        if looks_like_tag_lists(spaced):
            several = int((spaced.str.split().str.len() > 1).sum())
            word = "space" if sep == " " else f"'{sep}'"
            keys = {} if sep == " " else {"data.label_sep": sep}
            return [Reading("multilabel", f"{several:,} of {len(labels):,} values hold several {word}-separated "
                                          "words -> multilabel", keys)]
    return []


def _one_hot(labels: pd.Series, s: Survey) -> list[Reading]:
    """0/1 columns with exactly one 1 in every row (Plant Pathology 2020): classes, not tags."""
    if s.get("data.label_cols") is None or not (s.per_row == 1).all():
        return []
    kind = "binary" if len(s.get("data.label_cols")) == 2 else "multiclass"
    return [Reading(kind, f"0/1 columns with exactly one 1 in each of the {len(labels):,} rows -> one-hot classes "
                          f"({kind}), not tags")]


def _columns(labels: pd.Series, s: Survey) -> list[Reading]:
    if s.get("data.label_cols") is None:
        return []
    n = s.per_row
    return [Reading("multilabel", f"0/1 columns; {int((n > 1).sum()):,} of {len(labels):,} images hold several "
                                  f"labels, {int((n == 0).sum()):,} none -> multilabel")]


def _numbers(labels: pd.Series, s: Survey) -> list[Reading]:
    values = pd.to_numeric(labels, errors="coerce")
    if s.names or values.isna().any() or not len(values):
        return []
    distinct, integer = values.nunique(), bool((values % 1 == 0).all())
    span = f"{values.min():g} to {values.max():g}"
    if distinct == 2:
        return [Reading("binary", f"two values ({span}) -> binary")]
    if not integer or distinct > MAX_GRADES:
        keys = {"data.target_range": [float(values.min()), float(values.max())]}
        return [Reading("regression", f"{distinct:,} distinct values from {span} -> regression (predictions "
                                      "clipped to the training range)", keys)]
    grades = Reading("ordinal", f"{distinct} integer values {span}: grades in order")
    classes = Reading("multiclass", f"{distinct} integer values {span}: classes")
    metric = s.get("metric.name") or (s.known[1].metric if s.known else None)
    if metric == "qwk":
        return [Reading("ordinal", f"{grades.why}, scored by qwk -> ordinal")]
    return [classes] if metric else [grades, classes]


def _words(labels: pd.Series, s: Survey) -> list[Reading]:
    distinct = labels.nunique()
    return [Reading("binary" if distinct == 2 else "multiclass",
                    f"{distinct:,} distinct labels -> {'binary' if distinct == 2 else 'multiclass'}")]


# In order: the first that reads the labels decides; one that returns two readings asks.
READINGS: tuple[Callable[[pd.Series, Survey], list[Reading]], ...] = (_one_hot, _columns, _tags, _numbers, _words)


def task(s: Survey) -> None:
    """data.task (and the keys its reading implies: the separator, the target range)."""
    known_task = s.known[1].keys.get("data.task") if s.known else None
    for read in READINGS:
        found = read(s.labels, s)
        if found:
            break
    if known_task and "data.task" not in s.given:
        found = [r for r in found if r.task == known_task] or [Reading(known_task, "")]
        found = [Reading(found[0].task, f"{s.known[0]}: {found[0].why or known_task}", found[0].keys)]
    label = s.get("data.label_col") if s.get("data.label_cols") is None else "data.label_cols"
    picked = s.choose("data.task", [(r.task, r.why) for r in found],
                      f"the labels ({label}) read two ways: " + " or ".join(f"{r.why} (data.task={r.task})"
                                                                            for r in found))
    reading = next((r for r in found if r.task == picked), Reading(str(picked), ""))
    for key, value in reading.keys.items():
        s.set(key, value, "the labels' separator" if key == "data.label_sep" else "the training range")
    loss = SimpleNamespace(**{k.split(".", 1)[1]: v for k, v in s.defaults.items() if k.startswith("loss.")})
    if TASKS[picked].check_loss(loss) and "loss.name" not in s.given:
        s.set("loss.name", TASKS[picked].first_loss, f"the recipe's loss.name={loss.name} does not train data.task={picked}")


# ---------------------------------------------------------------- images, groups, the metric


def _folder_of(s: Survey, ids: pd.Series) -> tuple[str, list[Path]] | None:
    """(the folder, relative to root, holding the files the ids name; the files found), or None."""
    by_key: dict[str, list[Path]] = {}
    for f in s.files:
        if f.suffix.lower() in IMAGE_SUFFIXES:
            for key in {f.as_posix(), f.with_suffix("").as_posix(), f.name, f.stem}:
                by_key.setdefault(key, []).append(f)
    probe = ids.drop_duplicates().head(ID_PROBE).astype(str)
    files = [by_key[i][0] for i in probe if i in by_key]
    if not files:
        return None
    home = os.path.commonpath([f.parent.as_posix() for f in files]) if len(files) > 1 else files[0].parent.as_posix()
    return home or ".", files


def _store_of(s: Survey, ids: pd.Series) -> tuple[str, int] | None:
    """(the HDF5 container, relative to root, whose keys name most of the ids; its key count), or None."""
    stores = [f for f in s.files if f.suffix.lower() in STORE_SUFFIXES]
    if not stores:
        return None
    import h5py  # only where a container lies in the folder

    probe = set(ids.drop_duplicates().head(ID_PROBE).astype(str))
    best = None
    for rel in stores:
        try:
            with h5py.File(s.root / rel, "r") as f:
                keys = set(f.keys())
        except OSError as e:
            raise UserError(f"{s.root / rel} cannot be read as HDF5 ({e}); replace the file") from None
        hits = len(probe & keys)
        if hits and (best is None or hits > best[2]):
            best = (rel.as_posix(), len(keys), hits)
    return best[:2] if best else None


def _images_of(s: Survey, ids: pd.Series, what: str, folder_key: str, store_key: str) -> list[Path]:
    """`folder_key` (the folder whose files the ids name) or else `store_key` (the HDF5 container whose
    keys they are), said with the evidence; the files found (none for a container)."""
    found = _folder_of(s, ids)
    n = ids.nunique()
    if found:
        home, files = found
        s.set(folder_key, home, f"the {n:,} {what} {'id names' if n == 1 else 'ids name'} files there "
                                f"({', '.join(sorted({f.suffix.lower() for f in files}))})")
        return files
    store = _store_of(s, ids)
    if store:
        s.set(store_key, store[0], f"an HDF5 container of {store[1]:,} images keyed by the {what} ids")
        return []
    shown = ", ".join(ids.drop_duplicates().astype(str).head(3))
    raise UserError(f"none of the {what} ids (e.g. {shown}) names an image file or a key of an HDF5 container under "
                    f"{s.root}; put the images there, or set data.image_dir / data.test_dir and data.image_exts")


def _first_is_photo(files: list[Path], s: Survey) -> bool | None:
    """Whether the first training file found is a 3-channel uint8 photo; only arrays are read (None: not one)."""
    if not files or files[0].suffix.lower() != ".npy":
        return None
    from src.data.arrays import is_photo, read_array

    return is_photo(read_array(s.root / files[0]))


def images(s: Survey) -> None:
    """data.image_dir and data.test_dir (or the HDF5 containers) where the ids find their files;
    data.image_exts when a suffix is not among the defaults; the recipe's mean and std dropped for
    images that are not photos (arrays, float pixels: their own statistics)."""
    if s.get("data.layout") == "pixels":
        _normalisation(s, "pixel values")
        return
    test_ids = (s.tables["test"][s.get("data.id_col")] if s.get("data.answer_id")
                else s.tables["sample"][s.tables["sample"].columns[0]])
    if s.get("data.layout") == "csv":
        train_files = _images_of(s, s.tables["train"][s.get("data.id_col")], "training", "data.image_dir",
                                 "data.image_store")
    else:
        top = Path(s.get("data.image_dir", "train")).parts[0]
        train_files = [f for f in s.files if f.parts[0] == top and f.suffix.lower() in IMAGE_SUFFIXES]
    test_files = [] if s.get("data.test_annotations") is not None else \
        _images_of(s, test_ids, "test", "data.test_dir", "data.test_image_store")
    seen = sorted({f.suffix.lower() for f in (*train_files, *test_files)})
    defaults = list(s.defaults.get("data.image_exts", []))
    if set(seen) - set(defaults):  # a suffix the defaults do not try: it goes first
        s.set("data.image_exts", seen + [e for e in defaults if e not in seen], f"the files are {', '.join(seen)}")
    elif seen:
        s.said.append(f"image files: {', '.join(seen)}")
    s.photo = _first_is_photo(train_files, s)
    _normalisation(s, f"arrays ({train_files[0].as_posix()})" if train_files else "")


def _normalisation(s: Survey, what: str) -> None:
    """aug.mean / aug.std null (the training images' own per-channel statistics) where the images are
    not photos and the recipe gives photo values, which would not fit their channels or units."""
    if s.photo is not False:
        return
    for key in ("aug.mean", "aug.std"):
        if s.defaults.get(key) is not None:
            s.set(key, None, f"the {what} are not 3-channel uint8 photos: normalised by their own per-channel "
                             f"{key.split('.')[1]} (the recipe's {s.defaults[key]} is for photos)")


def groups(s: Survey) -> None:
    """data.group_col: a patient-, study- or individual-like column whose values recur across rows,
    so that no patient's images straddle two folds."""
    train = s.tables.get("train")
    if train is None:
        return
    taken = {s.get("data.id_col"), s.get("data.label_col"), *(s.get("data.label_cols") or [])}
    found = []
    for c in train.columns:
        distinct = train[c].nunique()
        # a flag (PetFinder's 0/1 Group, Subject Focus) is no grouping: a group column has many values
        if c not in taken and GROUP_NAME.search(c) and 2 * s.defaults.get("data.n_folds", 5) < distinct < len(train):
            found.append((c, f"{distinct:,} {c} values over {len(train):,} rows -> folds grouped by {c}"))
    if found:
        found.sort(key=lambda o: train[o[0]].nunique())  # the coarsest grouping first: it also holds the finer
        s.choose("data.group_col", found, f"{len(found)} columns could group the folds "
                                          f"({', '.join(o[0] for o in found)})")


def metadata(s: Survey) -> None:
    """Columns of both train.csv and test.csv beyond the id, labels, groups and answers: offered as
    data.meta_cols, not switched on (a first submission is the image model's; the metadata branch
    is one key away)."""
    train, test = s.tables.get("train"), s.tables.get("test")
    if train is None or test is None or s.get("data.layout") != "csv":  # the metadata branch reads train.csv
        return
    taken = {s.get("data.id_col"), s.get("data.label_col"), s.get("data.group_col"), s.get("data.answer_col"),
             *(s.get("data.label_cols") or [])}
    shared = [c for c in train.columns if c in test.columns and c not in taken]
    if shared and s.get("data.meta_cols") is None:
        shown = ", ".join(shared[:8]) + (f" and {len(shared) - 8} more" if len(shared) > 8 else "")
        s.said.append(f"metadata: train.csv and test.csv share {counted(len(shared), 'column')} ({shown}); "
                      "data.meta_cols=auto feeds them beside each image (and python -m src.probe --meta scores "
                      "them alone)")


def metric(s: Survey) -> None:
    """metric.name: from the table of known competitions, else guessed from the task and the sample."""
    if s.known:
        slug, entry = s.known
        s.set("metric.name", entry.metric, f"{slug}'s metric ({entry.source})" + (f"; {entry.note}" if entry.note
                                                                                   else ""))
        for key, value in entry.keys.items():
            if key != "data.task":
                s.set(key, value, f"{slug}: {entry.note or 'its evaluation page'}")
        return
    t = make_task(s.get("data.task"), _classes(s))
    sample = s.tables["sample"]
    guess = t.guess_metric(sample, s.get("data.answer_col") or s.get("data.id_col") or sample.columns[0])
    s.set("metric.name", guess, f"GUESSED from the task and the sample submission: {s.slug} is not in "
                                "src/kaggle/competitions.py, and the folder does not say; check the competition's "
                                "evaluation page and set --metric")


def unseen(s: Survey) -> None:
    """ensemble.new_label: a ranked (MAP@k) competition whose most common training label names the
    individuals never seen (humpback whales' new_whale) ranks it at a threshold fitted on OOF."""
    if s.get("data.task") != "multiclass" or not str(s.get("metric.name")).startswith("map@") or s.labels is None:
        return
    counts = s.labels.value_counts()
    if NEW_LABEL.fullmatch(str(counts.index[0])):
        s.set("ensemble.new_label", counts.index[0],
              f"{counts.index[0]} is the most common training label ({counts.iloc[0]:,} of {len(s.labels):,}): the "
              "label of an individual never seen, ranked at a threshold fitted on the OOF predictions")


def _classes(s: Survey) -> list[str]:
    if s.get("data.label_cols"):  # the columns are the classes or labels, spaces and all
        return list(s.get("data.label_cols"))
    t = TASKS[s.get("data.task")]()
    labels = s.labels if s.get("data.label_sep") in (None, " ") else s.labels.str.replace(
        s.get("data.label_sep"), " ", regex=False)
    return t.class_list(labels)


DETECTORS: tuple[Callable[[Survey], None], ...] = (walk, sample_submission, layout, task, images, groups, metadata,
                                                   metric, unseen)


def survey(root: Path, slug: str, given: dict[str, Any], guess: bool, defaults: dict[str, Any]) -> Survey:
    """The folder read: every detector run in order (`defaults`: the recipe's values, dotted)."""
    s = Survey(root=root, slug=slug, given=given, guess=guess, known=known(slug), defaults=defaults)
    for detect in DETECTORS:
        detect(s)
    return s
