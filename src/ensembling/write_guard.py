"""Where a command may write. Every command that takes an output path (src.ensemble, src.probe,
src.pseudo and src.report --compare --out, src.ledger --ledger, src.bench --out, src.demo --out,
src.kaggle_kernel build/train --out and rehearse-train --kaggle-root) asks here before it predicts
or writes anything, and a refusal is one sentence naming the flag, the path, what it would
overwrite and a safe place.

Refused for a file (`check_writable`):
  - a folder where a file is expected;
  - inside the competition (data.dir), the folder holding the competitions (inputs/ or input/), the image cache
    (data.cache_dir), the splits (<output_dir>/folds/), the code (src/) or the configs (configs/);
  - inside a run folder: the experiment's own <output_dir>/<name>/, and any folder holding a fold's
    files (done.json, best.pt, last.pt, oof.csv) or an experiment's (cv.json, fold<k>/);
  - inside a Kaggle bundle (MANIFEST.json, kernel- or dataset-metadata.json);
  - over another command's record: a checkpoint, a config, a ledger, a blend, a pseudo-label table,
    a submission the ledger recorded or one of its sidecars, unless it is the kind of file the
    command writes there (the ensemble compares a recorded submission's bytes itself:
    ledger.free_submission_path).
A folder a command replaces whole (`check_replaceable`: the Kaggle build folders) is refused where
a file would be (an earlier build, and the training build inside the inference one, aside), when it
holds any of those places, and when it holds what no earlier build wrote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from src.core.config import Config
from src.core.utils import UserError
from src.ensembling.ledger import ledger_path, recorded
from src.ensembling.submission import sidecar_owner, sidecar_paths

CHECKPOINTS = {".pt", ".pth", ".ckpt", ".safetensors", ".bin"}
CONFIGS = {".yaml", ".yml"}
FOLD_FILES = ("done.json", "best.pt", "last.pt", "oof.csv")
BUNDLE_FILES = ("MANIFEST.json", "kernel-metadata.json", "dataset-metadata.json", "dataset/MANIFEST.json",
                "code/dataset-metadata.json")
COMPETITIONS = ("inputs", "input")  # the names of a folder holding competitions
FOLD_DIR = re.compile(r"fold\d+$")
PACKAGE = Path(__file__).resolve().parents[1]  # src/


def _places(cfg: Config | None) -> list[tuple[Path, str]]:
    """(resolved folder, what it is) that no output may land in."""
    places = [(PACKAGE, "the code (src/)"), (PACKAGE.parent / "configs", "the configs (configs/)"),
              (Path("configs").resolve(), "the configs (configs/)")]
    if cfg is None:
        return places
    from src.data.image_cache import cache_root  # imports torch: src.ledger --help must not wait for it
    data = Path(cfg.data.dir).resolve()
    places.append((data, f"the competition folder {cfg.data.dir} (data.dir)"))
    if data.parent.name in COMPETITIONS:  # this project's inputs/, Kaggle's /kaggle/input/
        places.append((data.parent, f"{data.parent.name}/, the folder holding the competitions"))
    places += [(cache_root(cfg).resolve(), "the image cache (data.cache_dir)"),
               ((Path(cfg.experiment.output_dir) / "folds").resolve(), "the splits (folds files)"),
               (cfg.out_dir.resolve(), f"the run folder of experiment {cfg.experiment.name}")]
    return places


def _is_fold(d: Path) -> bool:
    return any((d / f).is_file() for f in FOLD_FILES)


def _marked(d: Path, bundles: bool) -> str | None:
    """What the existing folder `d` is, when another command wrote it as a whole: a run, or (when
    `bundles`) a Kaggle bundle."""
    if _is_fold(d) or (d / "cv.json").is_file() or any(FOLD_DIR.match(c.name) and _is_fold(c) for c in d.glob("fold*")):
        return f"the run folder {d}"
    if bundles and any((d / f).is_file() for f in BUNDLE_FILES):
        return f"the Kaggle bundle {d}"
    return None


def _inside(path: Path, cfg: Config | None, bundles: bool = True) -> str | None:
    """The protected place `path` (resolved) is or lies in, else None (Kaggle bundles only when `bundles`)."""
    for place, what in _places(cfg):
        if path.is_relative_to(place):
            return what
    for d in [path, *path.parents]:
        what = d.is_dir() and _marked(d, bundles)
        if what:
            return what
    return None


def _pseudo_table(path: Path) -> bool:
    """A pseudo-label table or its .json (src.pseudo): a .csv and a .json of one stem, the .json saying soft and classes."""
    meta = path.with_suffix(".json")
    if path.suffix not in (".csv", ".json") or not (meta.is_file() and path.with_suffix(".csv").is_file()):
        return False
    try:
        return {"soft", "classes"} <= set(json.loads(meta.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError):
        return False


def _role(path: Path) -> tuple[str, str] | None:
    """(kind, words) of an existing file another command wrote as a record, else None. Kinds:
    checkpoint, config, ledger, pseudo, and submission or a sidecar kind (probs, thresholds, blend)
    prefixed 'recorded ' when the ledger beside it holds its submission."""
    suffix, owner = path.suffix.lower(), sidecar_owner(path)
    if suffix in CHECKPOINTS:
        return "checkpoint", "a checkpoint"
    if suffix in CONFIGS:
        return "config", "a config"
    if path.name == "ledger.csv":
        return "ledger", "a submission ledger"
    if _pseudo_table(path):
        return "pseudo", "a pseudo-label table (src.pseudo)"
    if recorded(path) is not None:
        return "recorded submission", "a submission the ledger recorded"
    if owner is not None and recorded(owner[1]) is not None:
        return f"recorded {owner[0]}", f"the {owner[0]} of {owner[1].name}, a submission the ledger recorded"
    if owner is not None and owner[0] == "blend":
        return "blend", "a submission's blend"
    return None


def check_writable(path: str | Path, cfg: Config | None, flag: str, kind: str, safe: str = "submissions/",
                   given: str | Path | None = None) -> Path:
    """Refuse, in one sentence, to write the file `path` (named by `flag`, whose value was `given`,
    default `path`) where the module docstring says; `kind` is what the command writes there (an
    existing file of that kind may be replaced; 'submission', 'probs', 'thresholds' and 'blend' also
    replace recorded ones: the ensemble compares their bytes itself). Returns `path`."""
    path, given = Path(path), Path(given or path)
    lead = f"{flag} {given}" + (f" would write {path}" if path != given else "")
    if path.is_dir():
        raise UserError(f"{lead}: {path} is a folder; give a file path such as {path / 'submission.csv'}")
    where = _inside(path.resolve(), cfg)
    if where:
        raise UserError(f"{lead} inside {where}, whose files must not change; write to {safe} or another folder")
    role = _role(path) if path.is_file() else None
    if role and role[0] not in (kind, f"recorded {kind}" if kind in ("submission", "probs", "thresholds", "blend")
                                else kind):
        raise UserError(f"{lead} over {path}, {role[1]}, which a later command reads; write to {safe} or another "
                        "path")
    return path


def check_replaceable(folder: str | Path, cfg: Config | None, flag: str, built: Callable[[str], bool],
                      safe: str) -> Path:
    """Refuse, in one sentence, to replace `folder` as a whole (named by `flag`) when it is or lies in
    a protected place, holds one (or the working folder), or holds an entry `built(name)` says no
    earlier build wrote. Returns the folder."""
    folder = Path(folder)
    lead = f"{flag} {folder} would be replaced as a whole"
    if folder.is_file():
        raise UserError(f"{flag} {folder} is a file; give a build folder such as {safe}")
    where = _inside(folder.resolve(), cfg, bundles=False)  # an earlier build is replaced; its contents say so
    if where:
        raise UserError(f"{lead}, and it is {where} or lies in it, whose files must not change; give {safe} or "
                        "another new folder")
    held = [what for place, what in [(Path.cwd().resolve(), "the working folder"), *_places(cfg)]
            if place.is_relative_to(folder.resolve())]
    stray = sorted(c.name for c in folder.iterdir() if not built(c.name)) if folder.is_dir() else []
    if held or stray:
        raise UserError(f"{lead}, and it holds {held[0] if held else ', '.join(stray[:3])}, which no earlier build "
                        f"wrote; give {safe} or another new folder")
    return folder


def check_submission_out(out: Path, cfg: Config, recorded_by_ledger: bool) -> Path:
    """A submission path (--out): it, its sidecars and, when the ledger records it
    (`recorded_by_ledger`: src.ensemble), the ledger beside it, each checked with check_writable; a
    submission the ledger did not record (src.probe) may not replace a recorded one. A .csv path."""
    kinds = ("submission", "probs", "thresholds", "blend") if recorded_by_ledger else ("submission", "probs", "thresholds")
    paths = {"submission": out, **sidecar_paths(out)}
    for kind in kinds:
        check_writable(paths[kind], cfg, "--out", kind if recorded_by_ledger else f"unrecorded {kind}", given=out)
    if recorded_by_ledger:
        check_writable(ledger_path(out), cfg, "--out", "ledger", given=out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} is not a .csv path; name the submission file, e.g. submissions/final.csv")
    return out
