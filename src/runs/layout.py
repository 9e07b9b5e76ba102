"""Run folders: the layout of outputs/<experiment>/, and the one way to read and write each file.

    outputs/<experiment>/
      config.yaml                 the resolved config of the latest fold started
      cv.json                     OOF scores after --fold all
      fold<k>/                    best.pt last.pt oof.csv history.csv curves.png
                                  confusion_matrix.png done.json (.lock while training)
      preds/fold<k>/              cached logits per checkpoint, split and TTA view (src.ensemble)
      wandb/                      offline W&B runs

A fold is finished only when its done.json exists: it is written last, and removed first when a
fold is trained again, so an interrupted run never looks finished. done.json also holds the
class list, which is how later stages learn it without loading a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.utils import UserError, atomic_save, atomic_save_npy, atomic_write_text
from src.data.images import content_sha1
from src.data.tables import prob_columns


@dataclass(frozen=True)
class FoldPaths:
    """The files of one fold's run folder."""

    dir: Path

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def done(self) -> Path:
        return self.dir / "done.json"

    @property
    def oof(self) -> Path:
        return self.dir / "oof.csv"

    @property
    def history(self) -> Path:
        return self.dir / "history.csv"

    @property
    def curves(self) -> Path:
        return self.dir / "curves.png"

    @property
    def confusion(self) -> Path:
        return self.dir / "confusion_matrix.png"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    @property
    def fold(self) -> int:
        """k of fold<k>/: the fold the folder's name files its run under."""
        return int(self.dir.name.removeprefix("fold"))


def experiment_dir(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / str(name)


def fold_paths(exp_dir: Path, fold: int) -> FoldPaths:
    return FoldPaths(Path(exp_dir) / f"fold{fold}")


# ---------------------------------------------------------------- finished folds


def finished_folds(exp_dir: Path) -> list[int]:
    """Validation folds (k >= 0) whose done.json exists, in order."""
    found = []
    for p in Path(exp_dir).glob("fold*/done.json"):
        tail = p.parent.name[4:]
        if tail.isdigit():
            found.append(int(tail))
    return sorted(found)


def read_done(fp: FoldPaths) -> dict:
    return json.loads(fp.done.read_text())


def fold_record(fp: FoldPaths) -> dict:
    """A finished fold's done.json, with its class list and resolved config (runs written by
    older versions lack them in done.json: they are read from best.pt)."""
    done = read_done(fp)
    if "classes" not in done or "config" not in done:
        from src.runs.checkpoint import load_checkpoint

        ckpt = load_checkpoint(fp.best)
        done = {**done, "classes": ckpt["classes"], "config": ckpt["config"]}
    return done


def split_folds(path: Path) -> dict[str, str] | None:
    """A folds file as id -> its validation fold (as written, a string), or None without one."""
    if not Path(path).is_file():
        return None
    split = pd.read_csv(path, usecols=["id", "fold"], dtype=str, keep_default_na=False)
    return dict(zip(split["id"], split["fold"]))


def _held_fold(fp: FoldPaths, split: dict[str, str] | None) -> tuple[str, str | None] | None:
    """(what fold<k>/ holds instead of fold k's run, the fold it is) from its done.json, its OOF
    rows' fold column and the split's fold of each OOF id; None when all three say k."""
    k = str(fp.fold)
    said = read_done(fp).get("fold")  # None: written before done.json named its fold
    if said is not None and str(said) != k:
        return f"fold {said}'s run (its done.json says fold {said})", str(said)
    if not fp.oof.is_file():  # an inference bundle ships no OOF
        return None
    oof = pd.read_csv(fp.oof, usecols=lambda c: c in ("id", "fold"), dtype=str, keep_default_na=False)
    rows = oof["fold"].value_counts() if "fold" in oof else pd.Series(dtype=int)
    others = [f for f in rows.index if f != k]  # most rows first
    if others:
        return f"OOF rows of fold {', '.join(rows.index)} ({fp.oof.name}'s fold column)", others[0]
    if split is None:
        return None
    theirs = oof["id"].map(split).fillna("none").value_counts()
    if set(theirs.index) - {k}:
        where = ", ".join(f"{n} in fold {f}" if f != "none" else f"{n} in no fold" for f, n in theirs.items())
        return f"OOF predictions of images the split puts elsewhere ({where})", None
    return None


def check_fold_identity(fp: FoldPaths, split: dict[str, str] | None, where: str | None = None,
                        fix: str | None = None) -> None:
    """Refuse a fold<k>/ that holds another fold's run (a folder moved or pulled under another
    name): its done.json, its OOF rows' fold column and, given the split (split_folds), the
    validation fold of each OOF id must all be k, or fold k would be blended, scored and shipped
    with another fold's model and rows. `where` names the folder, `fix` the way out."""
    held = _held_fold(fp, split)
    if held is None:
        return
    what, other = held
    k = fp.fold
    moved = f"move the folder to fold{other}/ if that is the fold it belongs to, then " if other else ""
    fix = fix or f"{moved}pull fold {k} again or retrain it (python -m src.train --fold {k})"
    raise UserError(f"{where or fp.dir} holds {what}, not fold {k}'s; {fix}")


def write_done(fp: FoldPaths, result: dict) -> None:
    atomic_write_text(fp.done, json.dumps(result, indent=2))


def mark_unfinished(fp: FoldPaths) -> None:
    """Remove done.json before a fold is trained again, so an interruption leaves it unfinished."""
    fp.done.unlink(missing_ok=True)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def _held(what: str, holder: str, fp: FoldPaths) -> str:
    return (f"{what} is being trained right now by {holder} (it holds the lock {fp.lock}); wait for it to finish or "
            "stop that process, then run again")


def check_not_locked(fp: FoldPaths, what: str) -> None:
    """Stop, naming the holder and the lock, when another process trains the fold now: before a
    fold is set up, and before its unfinished last.pt is taken for an interrupted run. The lock is
    only tried here, never kept (fold_lock takes it for training)."""
    if not fp.lock.is_file():
        return
    fd = os.open(fp.lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(_held(what, _holder(fd), fp)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def fold_lock(fp: FoldPaths, what: str):
    """Hold an exclusive lock on a fold folder while it trains.

    A second process on the same fold stops with one sentence naming the holder. The lock is
    the operating system's (flock), so a killed process never leaves it behind.
    """
    fp.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(fp.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(_held(what, _holder(fd), fp)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- OOF files


def write_oof(path: Path, ids, fold: int, labels, targets, probs: np.ndarray, classes: list[str],
              run_id: str, epoch: int, answers=None) -> None:
    """oof.csv: id, fold, label, target (the class index; none for a multi-label task, whose label
    holds its tags), run_id, epoch (of the model that predicted), then prob_<class> for every class,
    atomically. One row per image; with data.answer_id an `answer` column after the label names its answer."""
    oof = pd.DataFrame({"id": list(ids), "fold": fold, "label": list(labels)})
    if answers is not None:
        oof["answer"] = list(answers)
    if targets is not None:
        oof["target"] = np.asarray(targets)
    oof["run_id"], oof["epoch"] = run_id, epoch
    oof[prob_columns(classes)] = probs
    atomic_save(path, lambda tmp: oof.to_csv(tmp, index=False))


def read_oof(path: Path, classes: list[str], run_id: str | None = None) -> pd.DataFrame:
    """An oof.csv with ids and labels kept as written (a label 'None' or 'NA' stays a string);
    its probability columns must be exactly `classes`, and its run id `run_id` when given."""
    df = pd.read_csv(path, dtype={"id": str, "label": str, "answer": str, "run_id": str, "epoch": str},
                     keep_default_na=False)
    have = [c for c in df.columns if c.startswith("prob_")]
    if have != prob_columns(classes):
        raise UserError(f"{path} holds predictions for other classes than its fold's done.json; retrain that fold")
    if run_id is not None and "run_id" in df and set(df["run_id"]) != {run_id}:
        raise UserError(f"{path} comes from another training run than its fold's done.json; retrain that fold "
                        "or restore the fold folder as one piece")
    return df


def oof_probs(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return df[prob_columns(classes)].to_numpy(dtype=np.float64)


# ---------------------------------------------------------------- cached predictions


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def preds_path(exp_dir: Path, fold: int, split: str, view: str, key: str) -> Path:
    """outputs/<exp>/preds/fold<k>/<split>-<view>-<key>.npy; the key names the checkpoint and the data."""
    return Path(exp_dir) / "preds" / f"fold{fold}" / f"{split}-{view}-{key[:16]}.npy"


def images_key(ids, paths) -> str:
    """Fingerprint of an ordered set of images: ids and the sha1 of each file's bytes."""
    h = hashlib.sha1()
    for i, p in zip(ids, paths):
        h.update(f"{i}\0{content_sha1(p)}\n".encode())
    return h.hexdigest()


# Bumped when the code that turns a checkpoint and images into logits (transforms, views, the
# inference loop) changes what it computes, so caches from before are not reused.
PREDS_VERSION = 3  # 2: uint8 batches normalised on the device; 3: images keyed on their bytes


def preds_key(ckpt_sha1: str, split: str, view: str, images: str, amp: str) -> str:
    """What a cached prediction depends on: the checkpoint's bytes, the images (ids and the bytes
    of their files), the view and the numeric precision."""
    return hashlib.sha1(f"{PREDS_VERSION}\0{ckpt_sha1}\0{split}\0{view}\0{images}\0{amp}".encode()).hexdigest()


def load_preds(path: Path) -> np.ndarray | None:
    try:
        return np.load(path)
    except FileNotFoundError:  # not cached, or replaced by another ensemble run just now
        return None


def save_cached_array(path: Path, array: np.ndarray, slot: Callable[[Path], str]) -> None:
    """Write a cache entry (float32 .npy) atomically, then remove the entries beside it of the same
    slot under older keys, so a cache holds one entry per slot. `slot(path)` names an entry's slot."""
    atomic_save_npy(path, array.astype(np.float32))
    for old in path.parent.glob("*.npy"):
        if old != path and slot(old) == slot(path):
            old.unlink(missing_ok=True)


def save_preds(path: Path, logits: np.ndarray) -> None:
    """Write logits; entries of the same fold, split and view under older keys (another checkpoint
    or image set) are removed, so the cache holds one per (fold, split, view)."""
    save_cached_array(path, logits, lambda p: p.name.rsplit("-", 1)[0])
