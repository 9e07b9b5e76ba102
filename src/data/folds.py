"""Stratified folds, assigned once per competition and shared by every experiment and ensemble.

The split is written to outputs/folds/<competition>_k<n>_s<seed>[_g<group>][_r<sha8>].csv with its
class list beside it (.json); `_r<sha8>` names reviewed labels (data.relabel, src/data/relabel.py). A
different fold count or seed is a different file; an existing file whose ids no longer match
train.csv stops the run instead of being rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from src.core.config import Config
from src.core.tasks import Task, task_of
from src.core.utils import UserError, atomic_save, atomic_write_text
from src.data.answers import check_answers, split_groups
from src.data.image_cache import cache_root, image_cache
from src.data.pseudo_rows import add_pseudo
from src.data.relabel import apply_relabel, relabel_tag
from src.data.tables import drop_bad_images, label_columns, load_train_table


def _class_list(labels: pd.Series, cfg: Config) -> list[str]:
    """The class list of the labels and the 0/1 columns train.csv declares (data.label_cols): a
    column never positive stays in the class list, since the submission needs every column."""
    return task_of(cfg).class_list(labels, label_columns(cfg.data))


def folds_path(cfg: Config) -> Path:
    d = cfg.data
    name = f"{Path(d.dir).resolve().name}_k{d.n_folds}_s{d.fold_seed}" + (f"_g{d.group_col}" if d.group_col else "")
    name += task_of(cfg).split_suffix  # tag sets: a split of their own
    if d.answer_id and not d.group_col:  # kept together by answer: a split of its own
        name += "_a" + hashlib.sha1(d.answer_id.encode()).hexdigest()[:8]
    if d.relabel:  # reviewed labels: a split of their own, named by their content
        name += f"_r{relabel_tag(d.relabel)}"
    return Path(cfg.experiment.output_dir) / "folds" / f"{name}.csv"


def _read_split(path: Path, df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The saved split joined to the training table, which must still hold the same ids and labels."""
    saved = pd.read_csv(path, dtype={"id": str, "label": str, "group": str}, keep_default_na=False)
    classes = json.loads(path.with_suffix(".json").read_text())["classes"]
    now, before = set(df["id"]), set(saved["id"])
    if now != before:
        raise UserError(
            f"train.csv no longer matches the split in {path} ({len(now - before)} ids added, "
            f"{len(before - now)} removed); restore the data, or delete {path} to split again"
        )
    merged = df.merge(saved[["id", "label", "fold"]], on="id", suffixes=("", "_saved"))
    changed = (merged["label"] != merged["label_saved"]).sum()
    if changed:
        raise UserError(
            f"{changed} labels in train.csv differ from the split in {path}; "
            f"delete {path} to split the relabelled data again"
        )
    return merged.drop(columns="label_saved"), classes


def _write_split(cfg: Config, df: pd.DataFrame, path: Path, meta: dict) -> None:
    cols = ["id", "label", "fold"] + (["group"] if cfg.data.group_col else [])
    meta = {"n_folds": cfg.data.n_folds, "seed": cfg.data.fold_seed, "group_col": cfg.data.group_col,
            "data_dir": cfg.data.dir, **meta}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    atomic_save(path, lambda tmp: df[cols].to_csv(tmp, index=False))


def _relabelled_split(cfg: Config, original: pd.DataFrame, df: pd.DataFrame, path: Path
                      ) -> tuple[pd.DataFrame, list[str]]:
    """The base split's folds and classes with the reviewed labels: a relabelled run validates on
    the same images as the runs before it, so the two can be compared fold by fold."""
    base_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"relabel": None})})
    base, classes, base_path = load_or_create_folds(base_cfg, table=original)
    bad = sorted(set(task_of(cfg).all_tags(df["label"])) - set(classes))
    if bad:
        raise UserError(f"data.relabel {cfg.data.relabel} assigns labels {bad[:5]} that are not classes of "
                        f"{base_path}; use existing class names")
    df = df.copy()
    df["fold"] = df["id"].map(dict(zip(base["id"], base["fold"])))
    changed = int((df["label"] != original["label"]).sum())
    _write_split(cfg, df, path, {"classes": classes, "relabel": cfg.data.relabel, "base_split": str(base_path),
                                 "relabelled": changed})
    return df, classes


def load_or_create_folds(cfg: Config, create: bool = True, table: pd.DataFrame | None = None, write: bool = True
                         ) -> tuple[pd.DataFrame, list[str], Path]:
    """(train table with a `fold` and a `target` column, class names, folds file path).

    `table` is the already loaded training table (load_train_table), to avoid reading it twice.
    With data.relabel, its labels replace train.csv's, in a split file of its own that keeps the
    base split's folds and classes. write=False (a dry run) makes a missing split without writing it.
    """
    save = _write_split if write else (lambda *a: None)
    original = load_train_table(cfg.data, cache_root(cfg)) if table is None else table
    df = apply_relabel(original, cfg.data.relabel) if cfg.data.relabel else original
    if cfg.data.relabel and "answer" in df:  # reviewed labels must keep one label per answer
        check_answers(df, Path(cfg.data.relabel))
    path = folds_path(cfg)
    if path.is_file() and path.with_suffix(".json").is_file():
        df, classes = _read_split(path, df)
    elif not create:
        raise UserError(f"no folds file {path}; run python -m src.folds first")
    elif cfg.data.relabel:
        df, classes = _relabelled_split(cfg, original, df, path)
    else:
        classes = _class_list(df["label"], cfg)
        task = task_of(cfg).with_classes(classes)  # binary with other than 2 classes, ordinal without integer grades: refused unwritten
        df = df.copy()
        groups = split_groups(df)  # data.group_col's groups, else the answers' images (data.answer_id)
        df["fold"] = task.split(df if groups is None else df.assign(group=groups), cfg.data.n_folds,
                                cfg.data.fold_seed, groups)
        save(cfg, df, path, {"classes": classes, **task.split_meta})
    lost = sorted(set(label_columns(cfg.data)) - set(classes))
    if lost:
        raise UserError(f"the split {path} lacks the data.label_cols labels {lost[:5]} (a split made when labels "
                        f"never positive were dropped); delete {path} and its .json to split again, then retrain")
    df = task_of(cfg, classes).with_targets(df)  # every label (tag) must be in the split's class list
    return df.reset_index(drop=True), classes, path


def fold_counts(df: pd.DataFrame, classes: list[str], task: Task) -> pd.DataFrame:
    """Images of each class (for a multi-label task: each label) in each fold."""
    rows = pd.DataFrame([(t, f) for lab, f in zip(df["label"], df["fold"]) for t in task.tags(lab)],
                        columns=["label", "fold"])
    return pd.crosstab(rows["label"], rows["fold"]).reindex(classes, fill_value=0)


def fold_tables(cfg: Config, fold: int, check_classes: Callable[[int], None] | None = None, write: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """(training rows, validation rows or None for fold -1, class names), readable images only;
    pseudo-labelled test images (data.pseudo) are appended to the training rows only.
    `check_classes(n_classes)` runs once the labels are read, before anything is written;
    write=False (a dry run) writes nothing: no split file, no image-check record, no cached image."""
    if fold != -1 and not 0 <= fold < cfg.data.n_folds:
        raise UserError(f"--fold {fold} is out of range; use 0..{cfg.data.n_folds - 1}, all, or -1")
    table = load_train_table(cfg.data, cache_root(cfg))
    if check_classes is not None:
        check_classes(len(_class_list(table["label"], cfg)))
    # Images are checked before the split is written, so bad data writes nothing; skipped images
    # stay in the split (it must not depend on which files were readable today).
    cache = folds_path(cfg).with_name(f"{Path(cfg.data.dir).resolve().name}_images_checked.json")
    pending: list = []
    undo: list = []
    try:
        readable = set(drop_bad_images(table, cfg, cache, defer=pending, images=image_cache(cfg, train=True),
                                       undo=undo)["id"])
        df, classes, _ = load_or_create_folds(cfg, table=table, write=write)
    except BaseException:
        for u in undo:  # new image-cache entries were staged: remove them
            u()
        raise
    for step in (pending if write else undo):  # the split accepted the data: remember the check, cache the images
        step()
    df = df[df["id"].isin(readable)].reset_index(drop=True)
    if fold == -1:
        return add_pseudo(df, cfg, classes), None, classes
    train = add_pseudo(df[df["fold"] != fold].reset_index(drop=True), cfg, classes)  # never the validation part
    return train, df[df["fold"] == fold].reset_index(drop=True), classes
