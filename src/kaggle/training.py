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

TRAIN = '''\
import json, shutil
from pathlib import Path
import yaml
from src.core.config import config_from_dict, with_overrides
from src.kaggle.training import TimeBudget, finish_on_kaggle
from src.training.trainer import train_fold

EXPERIMENT, FOLD, KERNEL, BUDGET_S = {experiment!r}, {fold}, {kernel!r}, {budget}
stored = yaml.safe_load(Path(CODE, "config.yaml").read_text())
stored["data"]["dir"] = os.path.join(ROOT, "input", {competition!r})
stored["experiment"]["output_dir"] = os.path.join(ROOT, "working", "outputs")
stored["data"]["cache_dir"] = os.path.join(ROOT, "tmp", "cache")  # not part of the notebook's output
stored["wandb"]["mode"] = "disabled"  # no internet
if {weights_file!r}:
    stored["model"]["pretrained_path"] = os.path.join(ROOT, "input", {weights!r}, {weights_file!r})
# The rehearsal's short epochs (unset on Kaggle):
stored = with_overrides(stored, os.environ.get("KAGGLE_TRAIN_OVERRIDES", "").split(), "KAGGLE_TRAIN_OVERRIDES")
cfg = config_from_dict(stored, "the code dataset's config.yaml")
here = Path(cfg.out_dir, f"fold{{FOLD}}")
Path(cfg.experiment.output_dir, "folds").mkdir(parents=True, exist_ok=True)
for f in Path(CODE, "folds").iterdir():  # the local split and its class list, exactly
    shutil.copy(f, Path(cfg.experiment.output_dir, "folds", f.name))
previous = Path(ROOT, "input", KERNEL.split("/")[1], "outputs", EXPERIMENT, f"fold{{FOLD}}")
resume = (previous / "last.pt").is_file() and not (previous / "done.json").is_file()
if resume:  # the previous version stopped before the end: go on from its last epoch
    shutil.copytree(previous, here, dirs_exist_ok=True)
    print(f"resuming fold {{FOLD}} from the previous version's output ({{previous}})")
try:
    result = train_fold(cfg, FOLD, resume=resume, on_epoch=TimeBudget(T0, BUDGET_S))
    finish_on_kaggle(here)
    print(f"fold {{FOLD}} finished: {{result['monitor']}} {{result['best']:.4f}} in {{time.time() - T0:.0f}} s")
except TimeBudget.Stop as e:
    print(f"fold {{FOLD}} stopped before the session's end ({{e}}); push a new version of this notebook with "
          "its own output attached (kernel_sources) to resume")'''


class TimeBudget:
    """on_epoch for train_fold: stop after the epoch when another one (as long as the longest so
    far) would overrun the session's budget; last.pt is on disk by then."""

    class Stop(Exception):
        pass

    def __init__(self, t0: float, budget_s: float):
        import time

        self.t0, self.budget, self.clock, self.last, self.longest = t0, budget_s, time.time, time.time(), 0.0

    def __call__(self, epoch: int, value: float) -> None:
        now = self.clock()
        self.longest, self.last = max(self.longest, now - self.last), now
        if now - self.t0 + 1.2 * self.longest > self.budget:
            raise TimeBudget.Stop(f"after epoch {epoch}, {now - self.t0:.0f} s of {self.budget:.0f} s used")


def finish_on_kaggle(fold_dir: Path) -> None:
    """A finished fold's output: best.pt slimmed as the inference bundle's (done.json's sha1
    follows), last.pt and the top-k copies dropped."""
    from src.kaggle.bundle import slim_checkpoint
    from src.runs.layout import file_sha1, fold_paths, fold_record, write_done

    fp = fold_paths(fold_dir.parent, int(fold_dir.name.removeprefix("fold")))
    slim_checkpoint(fp.best, fp.best, half=False)
    write_done(fp, {**fold_record(fp), "best_sha1": file_sha1(fp.best)})
    fp.last.unlink(missing_ok=True)
    shutil.rmtree(fp.dir / "top", ignore_errors=True)


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
            experiment=spec.experiment, fold=fold, kernel=kernel, budget=int(spec.timeout * 0.95) - 300,
            competition=spec.competition, weights=(spec.weights or "/").split("/", 1)[1], weights_file=weights_file or "",
            )),
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


def rehearse_training(cfg: Config, build: Path, root: Path, folds: list[int], overrides: str) -> dict[int, float]:
    """Run each fold's notebook on the fake /kaggle `root` (created if needed; input/<competition> and
    input/<code> are linked in), `overrides` (e.g. "train.epochs=1") for short epochs; then move its
    working/ to input/<kernel-slug>/, where its next version finds it. Returns each fold's seconds."""
    code_meta = json.loads((build / "code" / "dataset-metadata.json").read_text())
    (root / "input").mkdir(parents=True, exist_ok=True)
    code_in = root / "input" / code_meta["id"].split("/", 1)[1]
    if not code_in.exists():
        os.symlink((build / "code").resolve(), code_in)
    seconds = {}
    for k in folds:
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
            seconds[k] = sum(execute_notebook(build / f"fold{k}" / meta["code_file"], root))
        finally:
            os.environ.pop("KAGGLE_TRAIN_OVERRIDES", None)
        check_inputs_untouched(before, snapshot(*inputs))
        shutil.rmtree(own, ignore_errors=True)
        shutil.move(root / "working", own)  # Kaggle mounts a notebook's output as input/<kernel-slug>/
    return seconds


# Settings a fold trained on Kaggle may have differently from the local experiment (paths, workers,
# tracking): anything else makes it another recipe, refused as mixed settings are.
PULL_MAY_DIFFER = ("data.dir", "data.cache_dir", "experiment.output_dir", "model.pretrained_path")


def download_output(kernel: str, dest: Path) -> Path:
    """`kaggle kernels output KERNEL -p dest` through the kaggle package; offline, one sentence
    naming the way round (download elsewhere, then --pulled)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        api.kernels_output(kernel, str(dest))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - no package, no token (its import exits), no network
        raise UserError(f"cannot download the output of {kernel} ({type(e).__name__}: {str(e)[:120]}); run `kaggle "
                        f"kernels output {kernel} -p DIR` where Kaggle is reachable and pass --pulled DIR") from None
    return dest


def check_pulled(cfg: Config, outputs: Path, kernel: str) -> list[Path]:
    """The finished folds of cfg's experiment in a downloaded output (its outputs/ folder), once they
    are known to be this experiment's: the same settings, split and competition. Writes nothing."""
    from src.runs.checkpoint import RESUME_MAY_CHANGE, config_diff
    from src.runs.layout import file_sha1, fold_paths, fold_record, read_done

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
    mine = cfg.to_dict()
    for d in folds:
        fp = fold_paths(exp, int(d.name.removeprefix("fold")))
        if not fp.done.is_file():
            raise UserError(f"fold {d.name[4:]} in the output of {kernel} is unfinished (last.pt, no done.json); push "
                            "the notebook again with its own output attached, so that it resumes, then pull")
        diff = [k for k in config_diff(fold_record(fp)["config"], mine)
                if not k.startswith((*RESUME_MAY_CHANGE, *PULL_MAY_DIFFER))]
        if diff:
            raise UserError(f"fold {d.name[4:]} in the output of {kernel} was trained with other settings than "
                            f"experiment {name} in {diff[:6]}; pull it with its own config")
        if read_done(fp).get("best_sha1") not in (None, file_sha1(fp.best)):
            raise UserError(f"fold {d.name[4:]} in the output of {kernel}: best.pt is not the file its done.json "
                            "recorded; download it again")
    return folds


def pull(cfg: Config, kernel: str, pulled: Path | None, force: bool) -> list[int]:
    """Bring a training notebook's finished folds into outputs/<experiment>/fold<k>/ (checked first;
    a local finished fold of another run is kept unless `force`)."""
    from src.runs.layout import fold_paths, read_done

    with tempfile.TemporaryDirectory(prefix="pull-") as tmp:
        src = pulled if pulled is not None else download_output(kernel, Path(tmp))
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


def link_kernel_folds(root: str, manifest: dict) -> str:
    """In the inference notebook (--from-kernels): link every fold the manifest names from the
    training notebooks' outputs (input/<kernel-slug>/outputs/<member>/fold<k>/) into one outputs
    folder under tmp/, each the very best.pt the bundle was built from; return that folder."""
    from src.runs.layout import file_sha1

    out = Path(root, "tmp", "outputs")
    found = {}
    for kernel in manifest["kernel_sources"]:
        for done in Path(root, "input", kernel.split("/", 1)[1], "outputs").glob("*/fold*/done.json"):
            found[(done.parent.parent.name, done.parent.name[4:])] = done.parent
    for member, folds in manifest["folds"].items():
        for k in folds:
            src = found.get((member, str(k)))
            if src is None:
                raise UserError(f"no attached training notebook holds fold {k} of {member}; attach the one that "
                                f"trained it (kernel_sources: {manifest['kernel_sources']})")
            if file_sha1(src / "best.pt") != manifest["best_sha1"][member][str(k)]:
                raise UserError(f"fold {k} of {member} in {src} is not the run the bundle was built from (a newer "
                                "version of its training notebook?); pull it and build the bundle again")
            dest = out / member / f"fold{k}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.symlink(src, dest)
    return str(out)


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
    sessions = math.ceil(seconds / max(1.0, timeout * 0.95 - 300))
    verdict = ("fits one session" if sessions <= 1 else
               f"exceeds the {timeout / 3600:.1f} h session: about {sessions} sessions (it stops and resumes)")
    return (f"fold {fold}: {epochs} epochs of {n_train} images {where} ({rate:.0f} img/s) take about "
            f"{seconds / 3600:.2f} h; {verdict}")
