"""The blend of every demo task, as the ensemble, the pseudo-labels and the Kaggle bundle write it:
shared by the test that compares today's outputs with the stored ones (test_blend_fixtures.py) and
by the command that stores them.

    python tests/ensembling/blend_cases.py      # trains the members, writes tests/fixtures/blend/

tests/fixtures/blend/<task>/ holds the members (outputs/: their finished folds, OOF files and
cached predictions, so that no model runs when blending them) and expected/: what the code that
wrote them produced from those members. The members are test_efficientnet at 32 px, two folds of
four short epochs: the blend, not their skill, is what is compared."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # conftest, when run as a script

from conftest import TASKS, build_task_competition  # noqa: E402

from src.core.config import load_config  # noqa: E402

FIXTURES = HERE.parent / "fixtures" / "blend"
TRAIN = ("model.name=test_efficientnet", "aug.img_size=32", "train.epochs=4",
         "train.min_steps=0", "loader.batch_size=32", "loader.num_workers=0", "data.check_images=false",
         "data.n_folds=2", "wandb.mode=disabled", "runtime.device=cpu")
# The multi-class case blends two members with weights fitted on OOF; the others one member, equal.
MEMBERS = {"multiclass": ["a", "b"]}
WEIGHTS = {"multiclass": "auto"}
PSEUDO_THRESHOLD = 0.3  # low enough that a one-epoch model keeps some rows


def config_for(task: str, comp: Path, config: Path, overrides: tuple[str, ...], out: Path, *extra: str):
    """The config of a task's case: its demo config on `comp`, members under `out`."""
    return load_config(config, [f"data.dir={comp}", f"experiment.output_dir={out}", *TRAIN, *overrides, *extra])


def blend_outputs(task: str, comp: Path, config: Path, overrides: tuple[str, ...], out: Path, work: Path
                  ) -> dict[str, bytes]:
    """Every file the three blends write for `task`, by name: the ensemble's submission and its
    probabilities, the pseudo-label table and its record (the data folder left out), the bundle's
    fitted decisions, and the submission the bundle's notebook writes with them."""
    from src.ensembling import pipeline
    from src.ensembling.pseudo_labels import make_pseudo
    from src.kaggle.bundle import BundleSpec, build_bundle

    names, weights = MEMBERS.get(task, ["a"]), WEIGHTS.get(task, "equal")
    cfg = config_for(task, comp, config, overrides, out)
    got: dict[str, bytes] = {}
    sub = pipeline.run(cfg, names, None, weights, None, work / "ensemble" / "submission.csv")
    got["submission.csv"] = sub.read_bytes()
    for p in sorted(sub.parent.glob(sub.stem + "*")):
        if p != sub and p.suffix == ".csv":
            got[p.name.replace(sub.stem, "submission")] = p.read_bytes()
    table = make_pseudo(cfg, names, None, weights, None, PSEUDO_THRESHOLD, False, 1, work / "pseudo" / "p.csv")
    got["pseudo.csv"] = table.read_bytes()
    meta = json.loads(table.with_suffix(".json").read_text())
    meta.pop("data_dir")
    got["pseudo.json"] = json.dumps(meta, indent=2).encode()
    spec = BundleSpec(members=names, views=list(cfg.ensemble.tta), weights=[], voting=cfg.ensemble.voting,
                      fmt=cfg.ensemble.format, competition="digits", dataset="user/digits-bundle",
                      kernel="user/digits-inference", gpu=False, half=False)
    manifest = build_bundle(cfg, spec, weights, work / "bundle", wheels=False)["manifest"]
    decided = {k: manifest[k] for k in ("members", "views", "weights", "voting", "format", "thresholds")}
    got["bundle.json"] = json.dumps(decided, indent=2).encode()
    kernel = pipeline.run(cfg, decided["members"], decided["views"], decided["weights"], decided["voting"],
                          work / "kernel" / "submission.csv", decided["format"], report=False,
                          thresholds=decided["thresholds"])
    got["kernel_submission.csv"] = kernel.read_bytes()
    return got


def slim(fp) -> None:
    """A fold's best.pt without its optimizer state (a third of the bytes), as the bundle ships it,
    recorded in its done.json; its predictions are then made by exactly these weights."""
    from src.kaggle.bundle import slim_checkpoint
    from src.runs.layout import file_sha1, fold_record, write_done

    slim_checkpoint(fp.best, fp.best, False)
    write_done(fp, {**fold_record(fp), "best_sha1": file_sha1(fp.best)})


def write_fixtures(root: Path) -> None:
    """Train every task's members under a scratch folder, blend them, and store both."""
    from src.demo import build_demo
    from src.runs.layout import fold_paths
    from src.training.trainer import train_fold

    demo = build_demo(root / "demo" / "digits")
    for task in TASKS:
        comp, config, overrides = build_task_competition(task, root / task, demo)
        out = root / task / "outputs"
        for i, name in enumerate(MEMBERS.get(task, ["a"])):
            cfg = config_for(task, comp, config, overrides, out, f"experiment.name={name}", f"experiment.seed={i}")
            for k in range(2):
                train_fold(cfg, k)
                slim(fold_paths(out / name, k))
            shutil.rmtree(out / name / "preds", ignore_errors=True)  # predicted again by the slim best.pt
        got = blend_outputs(task, comp, config, overrides, out, root / task / "work")
        dest = FIXTURES / task
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out, dest / "outputs", ignore=shutil.ignore_patterns("last.pt", "*.png", "wandb", "*.lock",
                                                                              "cache"))
        (dest / "expected").mkdir(parents=True)
        for name, data in got.items():
            (dest / "expected" / name).write_bytes(data)
        print(f"{task}: {sorted(got)}")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_fixtures(Path(tmp))
