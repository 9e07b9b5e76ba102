"""What the notebooks run on Kaggle (and in the rehearsal): after the setup cell has put the
dataset's code on sys.path and installed its wheels, each notebook's work is one call here.

Nothing heavy at import time: each function imports what its notebook needs, and no more (the
inference notebook never imports the trainer)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from src.core.utils import UserError


def infer(root: str, bundle: str, t0: float) -> Path:
    """The inference notebook: src.ensemble's pipeline on input/<competition>/ with the bundle's
    config, members, views, weights and thresholds, into working/submission.csv.

    Args:
        root: the /kaggle root ($KAGGLE_ROOT).
        bundle: the bundle dataset's folder, input/<dataset-slug>/.
        t0: when the notebook started, for the closing line.
    """
    import yaml

    from src.core.config import config_from_dict
    from src.ensembling.pipeline import run  # the same code as `python -m src.ensemble`

    manifest = json.loads(Path(bundle, "MANIFEST.json").read_text())
    stored = yaml.safe_load(Path(bundle, "config.yaml").read_text())
    stored["data"]["dir"] = os.path.join(root, "input", manifest["competition"])
    stored["experiment"]["output_dir"] = os.path.join(bundle, "outputs")
    stored["loader"]["num_workers"] = min(4, os.cpu_count() or 1)
    stored["data"]["cache"] = False  # the input folder is read-only, and one pass per member decodes each image once anyway
    stored["data"]["cache_dir"] = os.path.join(root, "tmp", "cache")  # pixel tables and containers become files there
    if manifest["kernel_sources"]:  # --from-kernels: each fold from the training notebook that left it
        stored["experiment"]["output_dir"] = link_kernel_folds(root, manifest)
    cfg = config_from_dict(stored, "the bundle's config.yaml")
    out = run(cfg, manifest["members"], manifest["views"], manifest["weights"], manifest["voting"],
              Path(root, "working", "submission.csv"), manifest["format"], report=False, cache=False,
              thresholds=manifest.get("thresholds"), blend=manifest.get("blend"))
    print(f"wrote {out} in {time.time() - t0:.0f} s")
    return out


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


def train(root: str, code: str, t0: float, *, experiment: str, fold: int, kernel: str, budget_s: float,
          competition: str, weights: str = "", weights_file: str = "") -> None:
    """A training notebook: train fold `fold` of the code dataset's config on input/<competition>/
    into working/outputs/<experiment>/fold<k>/, resuming from the notebook's own previous output
    (input/<kernel-slug>/) where that stopped early, and stopping between epochs before `budget_s`.

    Args:
        root: the /kaggle root ($KAGGLE_ROOT).
        code: the code dataset's folder, input/<code-slug>/.
        t0: when the notebook started (the budget counts from there).
        weights, weights_file: the slug of the dataset holding model.pretrained_path's file, and its name.
    """
    from src.training.trainer import train_fold

    cfg = _training_config(root, code, competition, weights, weights_file)
    here = Path(cfg.out_dir, f"fold{fold}")
    Path(cfg.experiment.output_dir, "folds").mkdir(parents=True, exist_ok=True)
    for f in Path(code, "folds").iterdir():  # the local split and its class list, exactly
        shutil.copy(f, Path(cfg.experiment.output_dir, "folds", f.name))
    previous = Path(root, "input", kernel.split("/")[1], "outputs", experiment, f"fold{fold}")
    resume = (previous / "last.pt").is_file() and not (previous / "done.json").is_file()
    if resume:  # the previous version stopped before the end: go on from its last epoch
        shutil.copytree(previous, here, dirs_exist_ok=True)
        print(f"resuming fold {fold} from the previous version's output ({previous})")
    try:
        result = train_fold(cfg, fold, resume=resume, on_epoch=TimeBudget(t0, budget_s))
        finish_on_kaggle(here)
        print(f"fold {fold} finished: {result['monitor']} {result['best']:.4f} in {time.time() - t0:.0f} s")
    except TimeBudget.Stop as e:
        print(f"fold {fold} stopped before the session's end ({e}); push a new version of this notebook with "
              "its own output attached (kernel_sources) to resume")


def _training_config(root: str, code: str, competition: str, weights: str, weights_file: str):
    """The code dataset's config.yaml with Kaggle's paths, no tracking, and the rehearsal's
    KAGGLE_TRAIN_OVERRIDES (short epochs; unset on Kaggle)."""
    import yaml

    from src.core.config import config_from_dict, with_overrides

    stored = yaml.safe_load(Path(code, "config.yaml").read_text())
    stored["data"]["dir"] = os.path.join(root, "input", competition)
    stored["experiment"]["output_dir"] = os.path.join(root, "working", "outputs")
    stored["data"]["cache_dir"] = os.path.join(root, "tmp", "cache")  # not part of the notebook's output
    stored["wandb"]["mode"] = "disabled"  # no internet
    if weights_file:
        stored["model"]["pretrained_path"] = os.path.join(root, "input", weights, weights_file)
    stored = with_overrides(stored, os.environ.get("KAGGLE_TRAIN_OVERRIDES", "").split(), "KAGGLE_TRAIN_OVERRIDES")
    return config_from_dict(stored, "the code dataset's config.yaml")


class TimeBudget:
    """on_epoch for train_fold: stop after the epoch when another one (as long as the longest so
    far) would overrun the session's budget; last.pt is on disk by then."""

    class Stop(Exception):
        pass

    def __init__(self, t0: float, budget_s: float):
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
