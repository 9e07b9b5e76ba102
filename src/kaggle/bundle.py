"""The offline Kaggle bundle: a dataset (code, configs, slim fold weights, wheels, manifest) and a
notebook that runs src.ensemble on /kaggle/input/<competition>/ and writes
/kaggle/working/submission.csv. Built in a temporary folder and moved into place at the end, so a
refused build leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import torch
import yaml

import src
from src.core.config import CONFIG_DIR, Config
from src.core.runtime import Runtime
from src.core.utils import UserError, atomic_write_text
from src.data.folds import load_or_create_folds
from src.ensembling.blend import Blend
from src.evaluation.blending import check_voting
from src.kaggle import slugs
from src.kaggle.wheels import IMAGE_FILE, download_wheels, needed_wheels, read_image
from src.runs.checkpoint import load_checkpoint, save_checkpoint
from src.runs.layout import file_sha1, fold_paths, fold_record, read_oof, write_done
from src.runs.members import Member, open_members

SRC_DIR = Path(src.__file__).resolve().parent  # the whole package, whichever module this is


@dataclass
class BundleSpec:
    """What the kernel runs: members, views, weights (numbers), voting, format, and where it lives."""

    members: list[str]
    views: list[str]
    weights: list[float]
    voting: str
    fmt: str
    competition: str  # slug: /kaggle/input/<competition>/
    dataset: str  # USER/SLUG of the bundle dataset
    kernel: str  # USER/SLUG of the notebook
    gpu: bool
    half: bool
    thresholds: list[float] | None = None  # a multi-label or ordinal blend's, fitted on OOF when the bundle is built
    image: Path = IMAGE_FILE  # the Kaggle image's packages: what it lacks is bundled (and hidden in the rehearsal)
    kernel_sources: list[str] | None = None  # --from-kernels: the training notebooks whose outputs hold the folds
    blend: Blend | None = None  # fitted on OOF by build_bundle; the manifest carries it for the kernel

    @property
    def dataset_slug(self) -> str:
        return self.dataset.split("/", 1)[1]


def bundle_spec(cfg: Config, *, experiments: list[str] | None = None, views: list[str] | None = None,
                voting: str | None = None, fmt: str | None = None, competition: str | None = None,
                dataset: str | None = None, kernel: str | None = None, gpu: bool = True, half: bool = False,
                image: Path = IMAGE_FILE, kernel_sources: list[str] | None = None) -> BundleSpec:
    """The bundle's spec from the command's choices, each None for the config's (or a name derived
    from the members and $KAGGLE_USERNAME); the slugs and the image list checked before anything is built.

    Args:
        experiments: the members (default: the config's experiment).
        views: TTA views, `auto [CANDIDATES]` included (default: ensemble.tta); fixed when the bundle is built.
        competition: the slug of /kaggle/input/<competition>/ (default: data.dir's folder name).
        dataset, kernel: USER/SLUG of the bundle dataset and of the notebook.
        kernel_sources: --from-kernels: the training notebooks whose outputs hold the folds.
    """
    from src.core.views import split_auto

    if not Path(image).is_file():
        raise UserError(f"--image {image} does not exist; give a list of the Kaggle image's packages "
                        "(name==version lines), or leave --image out for today's image")
    members = experiments or [str(cfg.experiment.name)]
    user, name = slugs.kaggle_user(), slugs.slug("-".join(members))
    views = views or cfg.ensemble.tta  # [auto, ...]: chosen on OOF when the bundle is built
    split_auto(views)  # a wrong view name stops here
    spec = BundleSpec(
        members=members, views=views, weights=[], voting=voting or cfg.ensemble.voting, fmt=fmt or cfg.ensemble.format,
        competition=competition or slugs.slug(Path(cfg.data.dir).resolve().name),
        dataset=dataset or f"{user}/{slugs.derived(name, 'bundle')}",
        kernel=kernel or f"{user}/{slugs.derived(name, 'inference')}",
        gpu=gpu, half=half, image=Path(image), kernel_sources=kernel_sources,
    )
    slugs.check_slug("--dataset", spec.dataset, slugs.DATASET_SLUG)
    slugs.check_slug("--kernel", spec.kernel, slugs.KERNEL_SLUG)
    return spec


def check_competition(cfg: Config, members: list[Member]) -> None:
    """Every member was trained on this config's competition: its classes and training ids."""
    table, classes, _ = load_or_create_folds(cfg, create=False)
    ids = set(table["id"])
    for m in members:
        oof_ids = set()
        for k in m.folds:
            oof_ids |= set(read_oof(fold_paths(m.exp_dir, k).oof, m.classes)["id"])
        if m.classes != classes or not oof_ids <= ids:
            raise UserError(f"experiment {m.name} was trained for another competition than {cfg.data.dir} (its "
                            "classes or training ids differ); build the bundle with that competition's config")


def slim_checkpoint(src: Path, dst: Path, half: bool) -> None:
    """best.pt without optimizer, scheduler or RNG state: weights, config, classes, fold, run id, and the
    fitted metadata preprocessing (data.meta_cols) the kernel encodes the test table with."""
    ckpt = load_checkpoint(src)
    model = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    save_checkpoint(dst, {"model": model, **{k: ckpt[k] for k in ("config", "classes", "fold", "run_id", "meta") if k in ckpt}})


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=SRC_DIR, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cv(m: Member) -> dict:
    """The member's OOF scores over exactly the folds the bundle carries (not cv.json, which may be older)."""
    return m.oof_scores()


def fetch_wheels(dest: Path, image: Path, what: str) -> None:
    """The wheels the Kaggle image lacks, into dest; a failure is one sentence naming --no-wheels."""
    try:
        download_wheels(dest, image)
    except RuntimeError as e:
        raise UserError(f"cannot fetch the wheels for {what} ({e}); build where the package index is "
                        "reachable, or pass --no-wheels if the Kaggle image has them") from None


def write_dataset(root: Path, cfg: Config, members: list[Member], spec: BundleSpec, wheels: bool) -> None:
    """dataset/: code/ (src and configs), outputs/<exp>/fold<k>/ (slim best.pt, done.json),
    config.yaml, wheels/, MANIFEST.json, dataset-metadata.json."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(SRC_DIR, root / "code" / "src", ignore=ignore)
    shutil.copytree(CONFIG_DIR, root / "code" / "configs", ignore=ignore)
    shipped = {}  # the sha1 of each best.pt the kernel opens: the slim one, or the training notebook's own
    for m in members:
        shipped[m.name] = {}
        for k in m.folds:
            shipped[m.name][str(k)] = m.sha(k)
            if spec.kernel_sources:  # the weights stay in the training notebooks' outputs
                continue
            fp = fold_paths(root / "outputs" / m.name, k)
            slim_checkpoint(fold_paths(m.exp_dir, k).best, fp.best, spec.half)
            shipped[m.name][str(k)] = file_sha1(fp.best)
            write_done(fp, {**fold_record(fold_paths(m.exp_dir, k)), "best_sha1": shipped[m.name][str(k)]})
    atomic_write_text(root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    packages, header = read_image(spec.image)
    needs = sorted(needed_wheels(packages, header.get("python", "3.12")))
    if wheels:
        fetch_wheels(root / "wheels", spec.image, "the bundle")
    manifest = {
        "members": spec.members, "folds": {m.name: m.folds for m in members}, "views": spec.views,
        "weights": spec.weights, "voting": spec.voting, "format": spec.fmt, "thresholds": spec.thresholds,
        "competition": spec.competition, "kernel_sources": spec.kernel_sources or [],
        "best_sha1": {m.name: {str(k): file_sha1(fold_paths(m.exp_dir, k).best) for k in m.folds} for m in members},
        "dataset": spec.dataset, "kernel": spec.kernel, "half": spec.half, "git_commit": _git_commit(),
        "cv": {m.name: _cv(m) for m in members}, "metric": cfg.metric.name,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
        "image": {"source": header.get("image", str(spec.image)), "python": header.get("python"), "lacks": needs},
        "blend": spec.blend.with_sha1(shipped).to_dict(),
    }
    atomic_write_text(root / "MANIFEST.json", json.dumps(manifest, indent=2))
    atomic_write_text(root / "dataset-metadata.json", json.dumps(
        {"title": spec.dataset_slug, "id": spec.dataset, "licenses": [{"name": "CC0-1.0"}]}, indent=2))


NOTEBOOK_SETUP = '''\
import os, sys, time
T0 = time.time()
ROOT = os.environ.get("KAGGLE_ROOT", "/kaggle")  # set it to run this notebook anywhere
BUNDLE = os.path.join(ROOT, "input", {slug!r})
sys.path.insert(0, os.path.join(BUNDLE, "code"))
from src.kaggle.wheels import install_wheels
install_wheels(os.path.join(BUNDLE, "wheels"))  # offline, and only where the image's version does not fit'''

# The same code as `python -m src.ensemble`, with the bundle's fixed members, views and weights.
NOTEBOOK_RUN = '''\
from src.kaggle.on_kaggle import infer
infer(ROOT, BUNDLE, T0)'''


def write_notebook(root: Path, spec: BundleSpec) -> Path:
    """notebook/<slug>.ipynb (nbformat 4) and kernel-metadata.json."""
    slug = spec.kernel.split("/", 1)[1]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {slug}\n\nOffline inference of {', '.join(spec.members)} "
                                      f"({len(spec.views)} TTA views) with the code and weights of the dataset "
                                      f"`{spec.dataset}`; writes `/kaggle/working/submission.csv`."),
        nbformat.v4.new_code_cell(NOTEBOOK_SETUP.format(slug=spec.dataset_slug)),
        nbformat.v4.new_code_cell(NOTEBOOK_RUN),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.validate(nb)
    path = root / f"{slug}.ipynb"
    root.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    atomic_write_text(root / "kernel-metadata.json", json.dumps({
        "id": spec.kernel, "title": slug, "code_file": path.name, "language": "python", "kernel_type": "notebook",
        "is_private": True, "enable_gpu": spec.gpu, "enable_internet": False, "dataset_sources": [spec.dataset],
        "competition_sources": [spec.competition], "kernel_sources": spec.kernel_sources or [],
    }, indent=2))
    return path


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def build_bundle(cfg: Config, spec: BundleSpec, weights, out: Path, wheels: bool = True) -> dict:
    """Check the members, fit the blend on OOF, and write out/dataset and out/notebook, replacing a
    previous build only once the new one is complete. Returns the manifest and the sizes."""
    check_voting(spec.voting, cfg.metric.name)
    members = open_members(cfg, spec.members)
    check_competition(cfg, members)
    rt = Runtime.from_cfg(cfg.runtime)
    # the kernel applies the blend fitted here, on OOF: views, weights (the very same numbers) and thresholds
    spec.blend = Blend.fit(cfg, members, spec.views, weights, spec.voting, rt, fmt=spec.fmt)
    spec.views, spec.weights, spec.thresholds = spec.blend.views, spec.blend.weights, spec.blend.thresholds
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        write_dataset(tmp / "dataset", cfg, members, spec, wheels)
        write_notebook(tmp / "notebook", spec)
        if (out / "train").is_dir():  # the training notebooks (the train verb) are built beside and stay
            os.replace(out / "train", tmp / "train")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        if (tmp / "train").is_dir() and out.is_dir() and not (out / "train").exists():
            os.replace(tmp / "train", out / "train")
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dataset_bytes": _size(out / "dataset"), "weights": spec.weights,
            "manifest": json.loads((out / "dataset" / "MANIFEST.json").read_text())}
