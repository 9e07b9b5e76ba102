"""Rehearse a built Kaggle bundle here: a fake /kaggle with input/<competition>/ (the test images
repeated N times, as a larger hidden test set would be) and input/<dataset>/, the notebook run
headless with its cells in order and no network, then the submission checked and the time
extrapolated to the real test set and the competition's limit."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from src.core.config import Config
from src.core.tasks import task_of
from src.core.utils import UserError, counted
from src.data.image_cache import cache_root
from src.data.images import find_bad_images
from src.data.meta_table import read_test
from src.data.tables import load_test_table, sample_id_col

# Environment variables that would let the notebook reach a network, and their offline values.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "PIP_NO_INDEX": "1",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
DROP_ENV = ("WANDB_API_KEY", "KAGGLE_KEY", "KAGGLE_USERNAME", "HF_TOKEN", "HF_ENDPOINT")


def _repeat_id(image_id: str, r: int) -> str:
    stem, dot, ext = image_id.rpartition(".")
    return f"{stem}__r{r}.{ext}" if dot and len(ext) <= 5 and "/" not in ext else f"{image_id}__r{r}"


MAX_REHEARSED = 100_000  # images: the pace is measured long before this; the estimate extrapolates the rest


def check_scale(cfg: Config, scale: int, hidden_size: int | None, tmp: Path) -> None:
    """Refuse, before anything is written, a --scale that rehearses more images than the hidden
    test set (or MAX_REHEARSED) or that the temporary folder's disk cannot hold (hard links cost a
    directory entry each; a copy, where the test images sit on another filesystem, their bytes)."""
    if scale < 1:
        raise UserError(f"--scale {scale} must be at least 1")
    if scale > 1 and _test_file(cfg):
        raise UserError(f"--scale {scale} repeats test image files, and this competition's test images are rows of "
                        f"one file ({_test_file(cfg)}); rehearse with --scale 1 and --hidden-size for the estimate")
    test, _ = load_test_table(cfg.data, cache_root(cfg))
    n = len(test)
    total, cap = n * scale, max(hidden_size or 0, MAX_REHEARSED)
    if total > cap:
        raise UserError(f"--scale {scale} would rehearse {total:,} images ({n} x {scale}), more than {cap:,}: the "
                        f"pace is measured well before that and --hidden-size extrapolates it; use --scale "
                        f"{max(1, cap // max(n, 1))} or less")
    sizes = sum(os.stat(p).st_size for p in test["path"])
    linked = os.stat(test["path"].iloc[0]).st_dev == os.stat(tmp).st_dev if n else True
    need = total * (64 + max((len(str(i)) for i in test["id"]), default=0)) + (0 if linked else (scale - 1) * sizes)
    free = shutil.disk_usage(tmp).free
    if need * 2 > free:
        raise UserError(f"--scale {scale} needs about {need / 2**30:.1f} GiB in {tmp} ("
                        + ("hard links and " if linked else "copies of the test images and ")
                        + f"the expanded sample submission) and {free / 2**30:.1f} GiB are free; use a smaller --scale "
                        "or point TMPDIR at a larger disk")


def _test_file(cfg: Config) -> str | None:
    """The one file holding every test image (a pixel table, an HDF5 container), or None for image files."""
    return cfg.data.test_csv if cfg.data.layout == "pixels" else cfg.data.test_image_store


def fake_competition(cfg: Config, dest: Path, scale: int) -> pd.DataFrame:
    """dest/<sample_submission> and dest/<test_dir>/ with every test image `scale` times (hard links
    where possible), or the one file holding them; returns the expanded sample submission."""
    test, sample = load_test_table(cfg.data, cache_root(cfg))
    if cfg.data.answer_id and scale > 1:
        raise UserError(f"--scale {scale} repeats each test image as a row of its own, and data.answer_id answers "
                        "several images per row; rehearse with --scale 1")
    if _test_file(cfg):  # the notebook reads the test pixels from /kaggle/input, as Kaggle ships them
        (dest / _test_file(cfg)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(cfg.data.dir) / _test_file(cfg), dest / _test_file(cfg))
        sample.to_csv(dest / cfg.data.sample_submission, index=False)
        return sample
    bad = find_bad_images(test["path"].tolist())
    if bad:
        raise UserError(f"{counted(len(bad), 'test image')} cannot be decoded, e.g. {bad[0]}; replace or remove them before "
                        "rehearsing (the real kernel would stop there too)")
    test_root = Path(cfg.data.dir) / cfg.data.test_dir
    id_col, rows = sample_id_col(cfg.data), []
    for r in range(scale):
        part = sample.copy()
        for i, (image_id, path) in enumerate(zip(test["id"], test["path"])):
            new_id = image_id if r == 0 else _repeat_id(image_id, r)
            rel = Path(path).relative_to(test_root)
            target = dest / cfg.data.test_dir / (rel if r == 0 else rel.with_name(f"{rel.stem}__r{r}{rel.suffix}"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
            if not cfg.data.answer_id:  # answers keep the sample's ids; their images are listed by test_csv
                part.iloc[i, part.columns.get_loc(id_col)] = new_id
        rows.append(part)
    expanded = pd.concat(rows, ignore_index=True)
    expanded.to_csv(dest / cfg.data.sample_submission, index=False)
    if cfg.data.answer_id:
        shutil.copyfile(Path(cfg.data.dir) / cfg.data.test_csv, dest / cfg.data.test_csv)
    elif cfg.data.meta_cols is not None:  # the test images' metadata, under their repeated ids too
        _fake_test_table(cfg, dest, test["id"], scale)
    return expanded


def _fake_test_table(cfg: Config, dest: Path, ids: pd.Series, scale: int) -> None:
    """dest/<data.test_csv>: the test table's rows of the sample's ids, `scale` times (repeated ids)."""
    table = read_test(cfg).loc[ids.tolist()].reset_index(drop=True)
    id_col = cfg.data.id_col
    parts = [table.assign(**{id_col: [i if r == 0 else _repeat_id(i, r) for i in ids]}) for r in range(scale)]
    (dest / cfg.data.test_csv).parent.mkdir(parents=True, exist_ok=True)
    pd.concat(parts, ignore_index=True).to_csv(dest / cfg.data.test_csv, index=False)


IMAGE_GUARD = '''\
# Rehearsal only: the packages the Kaggle image lacks are hidden, as they are on Kaggle, until the
# bundle's wheels install them (into KAGGLE_WHEELS_TARGET, first on sys.path).
import sys
sys.path.insert(0, {code!r})  # the bundle's code, as the next cell puts it
from src.kaggle.wheels import hide_lacking
hide_lacking({lacks!r}, {modules!r})'''


def guarded_notebook(notebook: Path, lacks: list[str], code: Path, dest: Path) -> Path:
    """A copy of the notebook that first hides the packages the Kaggle image lacks (IMAGE_GUARD,
    with the bundle's code at `code`, so that the notebook imports that copy of src and no other)."""
    from src.kaggle.wheels import canonical

    modules = {m: ", ".join(sorted({canonical(d) for d in ds} & set(lacks)))
               for m, ds in importlib.metadata.packages_distributions().items()
               if {canonical(d) for d in ds} & set(lacks) and not m.startswith("_")}
    nb = nbformat.read(notebook, as_version=4)
    cell = IMAGE_GUARD.format(code=str(code), lacks=sorted(lacks), modules=modules)
    nb.cells.insert(0, nbformat.v4.new_code_cell(cell))
    nbformat.write(nb, dest)
    return dest


def execute_notebook(notebook: Path, root: Path) -> list[float]:
    """Run the notebook's cells in order in a fresh kernel with the fake root and no network;
    return each code cell's seconds."""
    nb = nbformat.read(notebook, as_version=4)
    saved = dict(os.environ)
    os.environ.update({**OFFLINE_ENV, "KAGGLE_ROOT": str(root), "KAGGLE_WHEELS_TARGET": str(root / "wheels")})
    for key in DROP_ENV:
        os.environ.pop(key, None)
    try:
        nb = NotebookClient(nb, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(root / "working")}}).execute()
    except CellExecutionError as e:
        message = (e.evalue or str(e)).strip().splitlines()
        raise UserError(f"the notebook failed in rehearsal: {e.ename}: {message[-1] if message else ''}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            t = cell.metadata.get("execution", {})
            start, end = t.get("iopub.status.busy"), t.get("shell.execute_reply")
            seconds.append((pd.Timestamp(end) - pd.Timestamp(start)).total_seconds() if start and end else 0.0)
    return seconds


def check_rehearsal(sub_path: Path, sample: pd.DataFrame, id_col: str, empty_ok: bool = False) -> pd.DataFrame:
    """The notebook's submission: the sample's columns and ids in order, and no empty value (but a
    multi-label image may have no tag: `empty_ok`)."""
    if not sub_path.is_file():
        raise UserError("the notebook ran but wrote no working/submission.csv")
    sub = pd.read_csv(sub_path, dtype=str, keep_default_na=False)
    if list(sub.columns) != list(sample.columns) or list(sub[id_col]) != list(sample[id_col].astype(str)):
        raise UserError("the rehearsal's submission.csv does not have sample_submission.csv's columns and ids in order")
    if (sub.drop(columns=id_col) == "").any().any() and not empty_ok or (sub[id_col] == "").any():
        raise UserError("the rehearsal's submission.csv has empty values")
    return sub


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the folders: what a run must leave as it was."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for d in folders for p in d.rglob("*") if p.is_file()}


def check_inputs_untouched(before: dict, after: dict) -> None:
    """Kaggle mounts /kaggle/input read-only; a notebook that writes there (a cache, an output
    folder) fails on Kaggle even though it ran here, where the fake input is writable (and root
    ignores permissions), so the rehearsal compares the files instead."""
    touched = sorted(set(after) - set(before)) + sorted(k for k in set(before) & set(after) if before[k] != after[k])
    gone = sorted(set(before) - set(after))
    if touched or gone:
        shown = ", ".join((touched + gone)[:3])
        raise UserError(f"the notebook wrote into /kaggle/input ({len(touched) + len(gone)} files, e.g. {shown}), which "
                        "is read-only on Kaggle; point that output at /kaggle/working instead")


def rehearse(cfg: Config, build: Path, scale: int = 1, time_limit_h: float = 9.0, hidden_size: int | None = None,
             keep: Path | None = None, kaggle_root: Path | None = None) -> dict:
    """Run the built notebook on a fake /kaggle; check its submission; time and extrapolate it.

    Args:
        cfg: the config the bundle was built with (its data section is the local competition).
        build: kaggle_kernel/build.
        scale: how many times each test image appears.
        time_limit_h: the competition's limit for the notebook.
        hidden_size: images in the real (hidden) test set (default: the public sample's rows).
        keep: where to copy the rehearsal's submission.csv.
        kaggle_root: a --from-kernels bundle: the fake /kaggle whose input/<kernel-slug>/ the training
            notebooks' rehearsal left (src.kaggle.training.rehearse_training).
    """
    if not (build / "dataset" / "MANIFEST.json").is_file():
        raise UserError(f"{build} holds no built bundle; build it first (python -m src.kaggle_kernel build --config "
                        "<config> --experiments ...)")
    manifest = json.loads((build / "dataset" / "MANIFEST.json").read_text())
    notebook = next((build / "notebook").glob("*.ipynb"))
    check_scale(cfg, scale, hidden_size, Path(tempfile.gettempdir()))
    previous = signal.signal(signal.SIGTERM, _terminated)  # a stopped rehearsal removes its temporary folder too
    try:
        return _rehearse(cfg, build, manifest, notebook, scale, time_limit_h, hidden_size, keep, kaggle_root)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt  # unwinds through the temporary folder's cleanup, as Ctrl-C does


def _kernel_inputs(manifest: dict, kaggle_root: Path | None, root: Path) -> None:
    """Link the training notebooks' outputs a --from-kernels bundle reads into the fake input/."""
    for kernel in manifest.get("kernel_sources", []):
        slug = kernel.split("/", 1)[1]
        src = None if kaggle_root is None else kaggle_root / "input" / slug
        if src is None or not src.is_dir():
            raise UserError(f"the bundle reads its folds from {kernel}'s output; rehearse the training notebooks first "
                            "(python -m src.kaggle_kernel rehearse-train --kaggle-root DIR) and pass the same --kaggle-root DIR")
        os.symlink(src.resolve(), root / "input" / slug)


def _rehearse(cfg: Config, build: Path, manifest: dict, notebook: Path, scale: int, time_limit_h: float,
              hidden_size: int | None, keep: Path | None, kaggle_root: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="kaggle-") as tmp:
        root = Path(tmp)
        (root / "input").mkdir()
        (root / "working").mkdir()
        os.symlink((build / "dataset").resolve(), root / "input" / manifest["dataset"].split("/", 1)[1])
        sample = fake_competition(cfg, root / "input" / manifest["competition"], scale)
        _kernel_inputs(manifest, kaggle_root, root)
        inputs = (build / "dataset", root / "input" / manifest["competition"])
        before = snapshot(*inputs)
        lacks = manifest.get("image", {}).get("lacks", [])
        code = root / "input" / manifest["dataset"].split("/", 1)[1] / "code"
        guarded = guarded_notebook(notebook, lacks, code, root / "rehearsal.ipynb")
        t0 = time.time()
        cells = execute_notebook(guarded, root)[1:]  # the guard cell is the rehearsal's, not the notebook's
        seconds = time.time() - t0
        check_inputs_untouched(before, snapshot(*inputs))
        check_rehearsal(root / "working" / "submission.csv", sample, sample_id_col(cfg.data), task_of(cfg).empty_labels_ok)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "working" / "submission.csv", keep)
    n = len(sample)
    hidden = hidden_size or n // scale
    # Setup (kernel start, wheels, imports) is paid once; the prediction cell (model loading
    # included, so the estimate errs high) grows with the images.
    fixed = seconds - cells[-1]
    estimate = fixed + cells[-1] / n * hidden
    return {"images": n, "seconds": seconds, "setup_s": fixed, "predict_s": cells[-1], "hidden_size": hidden,
            "estimate_s": estimate, "limit_s": time_limit_h * 3600, "over_limit": estimate > time_limit_h * 3600}
