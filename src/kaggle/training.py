"""Kaggle notebooks as the training machine: a code dataset (the src package, configs, the resolved
config, the experiment's folds file, wheels the image lacks) and one notebook per fold that trains
that fold on /kaggle/input/<competition>/ into /kaggle/working/outputs/<experiment>/fold<k>/.

A notebook stops itself, between epochs, before its session's time is up (a Kaggle run killed at the
limit keeps no output): it leaves last.pt without done.json, and its next version, with its own
previous output attached (kernel_sources), resumes there. A finished fold keeps best.pt without
optimizer state (as the inference bundle's), oof.csv, history, figures and done.json.

The rehearsal runs each notebook here on a fake /kaggle (the competition and the code dataset as
inputs, network variables off) and moves its /kaggle/working to where Kaggle mounts that
notebook's output for the next version: input/<kernel-slug>/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from src.core.config import CONFIG_DIR, Config
from src.core.utils import UserError, atomic_write_text
from src.data.folds import folds_path
from src.kaggle import slugs
from src.kaggle.bundle import SRC_DIR, fetch_wheels
from src.kaggle.rehearsal import check_inputs_untouched, execute_notebook, snapshot
from src.kaggle.wheels import IMAGE_FILE


@dataclass
class TrainSpec:
    """What the training notebooks run and where they live."""

    experiment: str
    folds: list[int]
    competition: str  # slug: /kaggle/input/<competition>/
    code: str  # USER/SLUG of the code dataset
    user: str
    accelerator: str  # what `kaggle kernels push --accelerator` takes, e.g. NvidiaTeslaT4
    timeout: int  # seconds of one session (Kaggle: 12 h for CPU/GPU notebooks, 9 h in some competitions)
    weights: str | None = None  # USER/SLUG of a dataset holding model.pretrained_path's file
    image: Path = IMAGE_FILE

    def kernel(self, fold: int) -> str:
        name = self.experiment.lower().replace("_", "-")[:36].strip("-")
        return f"{self.user}/{name}-train-fold{fold}"


def train_spec(cfg: Config, *, folds: list[int] | None = None, competition: str | None = None,
               code: str | None = None, accelerator: str = "NvidiaTeslaT4", timeout: int = 12 * 3600,
               weights: str | None = None, image: Path = IMAGE_FILE) -> TrainSpec:
    """The training notebooks' spec for cfg's experiment, the slugs checked before anything is built.

    Args:
        folds: the folds, one notebook each (default: all of data.n_folds).
        competition: the slug of /kaggle/input/<competition>/ (default: data.dir's folder name).
        code: USER/SLUG of the code dataset (default: $KAGGLE_USERNAME/<experiment>-code).
        accelerator, timeout: what `kaggle kernels push` asks for, and one session's seconds.
        weights: USER/SLUG of the dataset holding model.pretrained_path's file.
    """
    user, name = slugs.kaggle_user(), str(cfg.experiment.name)
    spec = TrainSpec(experiment=name, folds=folds if folds is not None else list(range(cfg.data.n_folds)), user=user,
                     competition=competition or slugs.slug(Path(cfg.data.dir).resolve().name),
                     code=code or f"{user}/{slugs.derived(slugs.slug(name), 'code')}", accelerator=accelerator,
                     timeout=timeout, weights=weights, image=Path(image))
    slugs.check_slug("--dataset", spec.code, slugs.DATASET_SLUG)
    for k in spec.folds:
        slugs.check_slug("--kernel", spec.kernel(k), slugs.KERNEL_SLUG)
    return spec


def check_weights_source(cfg: Config, spec: TrainSpec) -> str | None:
    """The pretrained file the notebooks read (from an attached dataset, never the hub), or None."""
    m = cfg.model
    if m.pretrained_path:
        if spec.weights is None:
            raise UserError(f"model.pretrained_path {m.pretrained_path} must reach the notebook as a Kaggle dataset; "
                            "upload it and pass --weights-dataset USER/SLUG")
        return Path(m.pretrained_path).name
    if m.pretrained:
        raise UserError("the training notebooks run offline, so model.pretrained=true cannot reach the hub there; "
                        "download the weights, set model.pretrained_path to the file and pass --weights-dataset "
                        "USER/SLUG (or set model.pretrained=false)")
    return None


SETUP = '''\
import os, sys, time
T0 = time.time()
ROOT = os.environ.get("KAGGLE_ROOT", "/kaggle")  # set it to run this notebook anywhere
CODE = os.path.join(ROOT, "input", {code!r})
sys.path.insert(0, CODE)
from src.kaggle.wheels import install_wheels
install_wheels(os.path.join(CODE, "wheels"))  # offline, and only where the image's version does not fit'''

# The training itself is src.kaggle.on_kaggle.train: the cell only names the fold and its sources.
TRAIN = '''\
from src.kaggle.on_kaggle import train
train(ROOT, CODE, T0, experiment={experiment!r}, fold={fold}, kernel={kernel!r}, budget_s={budget},
      competition={competition!r}, weights={weights!r}, weights_file={weights_file!r})'''


def write_code_dataset(root: Path, cfg: Config, spec: TrainSpec, wheels: bool) -> None:
    """code/: src, configs, config.yaml (resolved), folds/<split>.csv, wheels/, dataset-metadata.json."""
    split = folds_path(cfg)
    if not (split.is_file() and split.with_suffix(".json").is_file()):
        raise UserError(f"the experiment's split {split} does not exist; run python -m src.folds --config <config> "
                        "first, so that every notebook trains on the same folds as this machine")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(SRC_DIR, root / "src", ignore=ignore)
    shutil.copytree(CONFIG_DIR, root / "configs", ignore=ignore)
    (root / "folds").mkdir()
    for f in (split, split.with_suffix(".json")):  # the split and its class list
        shutil.copy(f, root / "folds" / f.name)
    atomic_write_text(root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if wheels:
        fetch_wheels(root / "wheels", spec.image, "the code dataset")
    atomic_write_text(root / "TRAIN.json", json.dumps({"timeout": spec.timeout, "accelerator": spec.accelerator,
                                                       "kernels": {k: spec.kernel(k) for k in spec.folds}}, indent=2))
    slug = spec.code.split("/", 1)[1]
    atomic_write_text(root / "dataset-metadata.json", json.dumps(
        {"title": slug, "id": spec.code, "licenses": [{"name": "CC0-1.0"}]}, indent=2))


def write_train_notebook(root: Path, cfg: Config, spec: TrainSpec, fold: int, weights_file: str | None) -> Path:
    """fold<k>/<slug>.ipynb and kernel-metadata.json: GPU on, internet off, the competition, the code
    (and weights) dataset, and the notebook's own previous output (for resuming)."""
    kernel = spec.kernel(fold)
    slug = kernel.split("/", 1)[1]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {slug}\n\nTrains fold {fold} of `{spec.experiment}` offline with the code "
                                      f"of `{spec.code}`; leaves `outputs/{spec.experiment}/fold{fold}/` in "
                                      "/kaggle/working. Resumes an unfinished fold from its previous version."),
        nbformat.v4.new_code_cell(SETUP.format(code=spec.code.split("/", 1)[1])),
        nbformat.v4.new_code_cell(TRAIN.format(
            experiment=spec.experiment, fold=fold, kernel=kernel, budget=training_budget(spec.timeout),
            competition=spec.competition, weights=(spec.weights or "/").split("/", 1)[1], weights_file=weights_file or "")),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.validate(nb)
    folder = root / f"fold{fold}"
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{slug}.ipynb")
    sources = [spec.code] + ([spec.weights] if spec.weights else [])
    atomic_write_text(folder / "kernel-metadata.json", json.dumps({
        "id": kernel, "title": slug, "code_file": f"{slug}.ipynb", "language": "python", "kernel_type": "notebook",
        "is_private": True, "enable_gpu": spec.accelerator != "None", "enable_internet": False,
        "dataset_sources": sources, "competition_sources": [spec.competition], "kernel_sources": [kernel],
    }, indent=2))
    return folder


def build_training(cfg: Config, spec: TrainSpec, out: Path, wheels: bool = True) -> list[Path]:
    """out/code/ and out/fold<k>/ for each fold, replacing a previous build only once complete."""
    weights_file = check_weights_source(cfg, spec)
    bad = [k for k in spec.folds if not 0 <= k < cfg.data.n_folds]
    if bad:
        raise UserError(f"--folds {bad} are not folds of a {cfg.data.n_folds}-fold split; give 0 to {cfg.data.n_folds - 1}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=out.parent))
    try:
        write_code_dataset(tmp / "code", cfg, spec, wheels)
        for k in spec.folds:
            write_train_notebook(tmp, cfg, spec, k, weights_file)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / f"fold{k}" for k in spec.folds]


def rehearse_training(cfg: Config, build: Path, root: Path, folds: list[int] | None, overrides: str,
                      pace: float | None = None) -> list[dict]:
    """Run each fold's notebook on the fake /kaggle `root` (created if needed; input/<competition> and
    input/<code> are linked in), `overrides` (e.g. "train.epochs=1") for short epochs; then move its
    working/ to input/<kernel-slug>/, where its next version finds it.

    Args:
        build: the built training notebooks (kaggle_kernel/build/train).
        folds: the folds to rehearse (default: every fold built).
        pace: training images a second on the Kaggle accelerator, for the estimate (estimate_fold).

    Returns, for each fold: {fold, seconds, output (its fold folder), estimate (a line, or None
    where the notebook left no history)}.
    """
    if not (build / "code" / "TRAIN.json").is_file():
        raise UserError(f"{build} holds no built training notebooks; build them first (python -m src.kaggle_kernel "
                        "train --config <config>)")
    built = json.loads((build / "code" / "TRAIN.json").read_text())
    folds = folds if folds is not None else [int(k) for k in built["kernels"]]
    unbuilt = [k for k in folds if str(k) not in built["kernels"]]
    if unbuilt:
        raise UserError(f"--folds {unbuilt} have no notebook in {build} (it holds folds {list(built['kernels'])}); "
                        f"build them first (python -m src.kaggle_kernel train --folds ...)")
    code_meta = json.loads((build / "code" / "dataset-metadata.json").read_text())
    (root / "input").mkdir(parents=True, exist_ok=True)
    code_in = root / "input" / code_meta["id"].split("/", 1)[1]
    if not code_in.exists():
        os.symlink((build / "code").resolve(), code_in)
    results = []
    for k in folds:
        seconds, own = _rehearse_fold(cfg, build, root, k, overrides)
        fold_out = own / "outputs" / str(cfg.experiment.name) / f"fold{k}"
        estimate = (estimate_fold(cfg, k, fold_out, built["timeout"], pace)
                    if (fold_out / "history.csv").is_file() else None)
        results.append({"fold": k, "seconds": seconds, "output": fold_out, "estimate": estimate})
    return results


def _rehearse_fold(cfg: Config, build: Path, root: Path, k: int, overrides: str) -> tuple[float, Path]:
    """One fold's notebook on the fake root: its seconds, and input/<kernel-slug>/, where its
    working/ went."""
    meta = json.loads((build / f"fold{k}" / "kernel-metadata.json").read_text())
    comp = root / "input" / meta["competition_sources"][0]
    if not comp.exists():
        os.symlink(Path(cfg.data.dir).resolve(), comp)
    own = root / "input" / meta["id"].split("/", 1)[1]
    inputs = [build / "code", Path(cfg.data.dir)] + ([own] if own.exists() else [])
    before = snapshot(*inputs)
    shutil.rmtree(root / "working", ignore_errors=True)
    (root / "working").mkdir()
    os.environ["KAGGLE_TRAIN_OVERRIDES"] = overrides
    try:
        seconds = sum(execute_notebook(build / f"fold{k}" / meta["code_file"], root))
    finally:
        os.environ.pop("KAGGLE_TRAIN_OVERRIDES", None)
    check_inputs_untouched(before, snapshot(*inputs))
    shutil.rmtree(own, ignore_errors=True)
    shutil.move(root / "working", own)  # Kaggle mounts a notebook's output as input/<kernel-slug>/
    return seconds, own


# Settings a fold trained on Kaggle may have differently from the local experiment (paths, workers,
# tracking): anything else makes it another recipe, refused as mixed settings are.
PULL_MAY_DIFFER = ("data.dir", "data.cache_dir", "experiment.output_dir", "model.pretrained_path")


def check_pulled(cfg: Config, outputs: Path, kernel: str) -> list[Path]:
    """The finished folds of cfg's experiment in a downloaded output (its outputs/ folder), once they
    are known to be this experiment's: the same settings, split and competition. Writes nothing."""
    from src.runs.checkpoint import RESUME_MAY_CHANGE, config_diff
    from src.runs.layout import check_fold_identity, file_sha1, fold_paths, fold_record, read_done, split_folds

    name, split = str(cfg.experiment.name), folds_path(cfg)
    exp = outputs / name
    folds = sorted(exp.glob("fold*/"))
    if not folds:
        found = sorted(p.parent.name for p in outputs.glob("*/fold*/")) or ["nothing"]
        raise UserError(f"the output of {kernel} holds no fold of experiment {name} (it holds {found[:3]}); pull it "
                        "with the config it was trained with")
    theirs_split = outputs / "folds" / split.name
    if not theirs_split.is_file() or file_sha1(theirs_split) != file_sha1(split):
        raise UserError(f"the output of {kernel} was trained on another split than {split} (another competition, "
                        "folds file or seed); build the training notebooks again from this split and retrain")
    mine, ids = cfg.to_dict(), split_folds(split)
    for d in folds:
        fp = fold_paths(exp, int(d.name.removeprefix("fold")))
        if not fp.done.is_file():
            raise UserError(_unfinished(fp, kernel))
        check_fold_identity(fp, ids, where=f"{d.name}/ in the output of {kernel}",
                            fix=f"nothing was installed; pull fold {fp.fold} from its own notebook's output, or "
                                "rename the folder after the fold it holds in an output downloaded already (--pulled DIR)")
        diff = [k for k in config_diff(fold_record(fp)["config"], mine)
                if not k.startswith((*RESUME_MAY_CHANGE, *PULL_MAY_DIFFER))]
        if diff:
            raise UserError(f"fold {d.name[4:]} in the output of {kernel} was trained with other settings than "
                            f"experiment {name} in {diff[:6]}; pull it with its own config")
        if read_done(fp).get("best_sha1") not in (None, file_sha1(fp.best)):
            raise UserError(f"fold {d.name[4:]} in the output of {kernel}: best.pt is not the file its done.json "
                            "recorded; download it again")
    return folds


def _unfinished(fp, kernel: str) -> str:
    """The sentence for a pulled fold without done.json, naming only the files it has."""
    where = f"fold {fp.fold} in the output of {kernel} is unfinished (no done.json"
    if fp.last.is_file():
        return (f"{where}; its session ended first and left last.pt); push the notebook again with its own output "
                "attached (kernel_sources), so that it resumes from last.pt, then pull")
    held = sorted(p.name for p in fp.dir.iterdir()) or ["nothing"]
    return (f"{where}, no last.pt to resume from: it holds {', '.join(held[:5])}); the notebook stopped before its "
            "first epoch ended, so read its log, push it again (it trains the fold from the start, with a longer "
            "--timeout if an epoch does not fit a session), then pull")


def pull(cfg: Config, kernel: str, src: Path, force: bool) -> list[int]:
    """Bring a training notebook's finished folds, from its output folder `src` (downloaded:
    src.kaggle.download), into outputs/<experiment>/fold<k>/ (checked first; a local finished fold
    of another run is kept unless `force`)."""
    from src.runs.layout import fold_paths, read_done

    outputs = src / "outputs" if (src / "outputs").is_dir() else src
    folds = check_pulled(cfg, outputs, kernel)
    for d in folds:
        here = fold_paths(cfg.out_dir, int(d.name[4:]))
        if here.done.is_file() and read_done(here)["run_id"] != read_done(fold_paths(d.parent, int(d.name[4:])))["run_id"] \
                and not force:
            raise UserError(f"{here.dir} holds another finished run of fold {d.name[4:]}; pass --force to replace "
                            "it with the pulled one")
    for d in folds:
        here = cfg.out_dir / d.name
        part = cfg.out_dir / f".{d.name}.pulling"
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(d, part, ignore=shutil.ignore_patterns(".lock"))
        shutil.rmtree(here, ignore_errors=True)
        part.rename(here)
    return [int(d.name[4:]) for d in folds]


def training_budget(timeout: int) -> int:
    """Seconds of a `timeout`-second session the notebook trains in: 5% and 5 minutes are kept for
    saving the outputs (TimeBudget stops between epochs before it)."""
    return int(timeout * 0.95) - 300


def duration(seconds: float) -> str:
    """Seconds as '42 s', '6.0 min' or '4.31 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def estimate_fold(cfg: Config, fold: int, fold_out: Path, timeout: int, pace: float | None) -> str:
    """One line: how long fold `fold` would take with the real epochs (train.min_steps included) at
    `pace` images a second (else the rehearsal's own, measured on this machine), against a session."""
    import math

    import pandas as pd

    from src.data.folds import load_or_create_folds
    from src.training.trainer import fold_epochs

    table, _, _ = load_or_create_folds(cfg, create=False)
    n_train, n_valid = int((table["fold"] != fold).sum()), int((table["fold"] == fold).sum())
    steps = max(1, math.ceil(n_train // cfg.loader.batch_size / cfg.train.accum_steps))
    epochs = fold_epochs(cfg.train, steps)
    measured = float(pd.read_csv(fold_out / "history.csv")["img_per_s"].median())
    rate, where = (pace, "at --pace") if pace else (measured, "at this machine's rehearsal pace")
    seconds = epochs * (n_train + n_valid / 2) / rate  # validation: a forward only, about half a step's cost
    budget, session = training_budget(timeout), duration(timeout)
    if budget <= 0:
        verdict = f"a {session} session leaves no time to train (5% and 5 min are kept for saving); raise --timeout"
    elif seconds <= budget:
        verdict = f"fits one session (which trains for up to {duration(budget)} of its {session})"
    else:
        verdict = (f"exceeds the {duration(budget)} a {session} session trains for: about "
                   f"{math.ceil(seconds / budget)} sessions (it stops and resumes)")
    return f"fold {fold}: {epochs} epochs of {n_train} images {where} ({rate:.3g} img/s) take about {duration(seconds)}; {verdict}"
