"""User mistakes through the real command-line entry points, one table row each.

Every row builds its own world under tmp_path (a copy of the digits demo in inputs/digits, and
for some rows the outputs of two tiny folds trained once for this module), damages it, runs
`run_cli(<module>.main, argv)` in-process with tmp_path as the working directory, and asserts:

  (a) exit status 2, i.e. a UserError (any other exception fails the test with its traceback);
  (b) stderr is exactly one line, "error: ...", naming the culprit and the fix;
  (c) no file under tmp_path was created, changed or removed by the failing command (sha1 of
      every file before and after; a row may name files a fresh run rewrites before failing).

The malicious rows also check that loading the checkpoint ran no code (a marker file).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import reliability_table
import torch
from conftest import COCO_OVERRIDES, build_coco_competition

import src.average as average
import src.ensemble as ensemble
import src.folds as folds
import src.init as init
import src.kaggle_kernel as kaggle_kernel
import src.ledger as ledger
import src.probe as probe
import src.pseudo as pseudo
import src.report as report
import src.score as score
import src.train as train
import src.tune as tune
from src.core.cli import run_cli
from src.data.pseudo_rows import pseudo_digest

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# Relative paths: every command runs with tmp_path as its working directory, so the inputs, the
# outputs and the default submissions/ folder all land there (and the image-check cache that the
# trained folds leave behind stays valid in each copy: same relative paths, sizes and mtimes).
TINY = [
    "data.dir=inputs/digits",
    "experiment.output_dir=outputs",
    "train.epochs=1",
    "train.limit_batches=2",
    "data.n_folds=2",
    "wandb.mode=disabled",
    "loader.num_workers=0",
    "runtime.device=cpu",
]
MODULES = {"train": train, "ensemble": ensemble, "folds": folds, "average": average, "pseudo": pseudo,
           "report": report, "probe": probe, "score": score, "ledger": ledger, "tune": tune,
           "kaggle_kernel": kaggle_kernel, "init": init}


# ---------------------------------------------------------------- worlds


def _link_pngs(src: str, dst: str) -> None:
    """Images are hard links (cheap); every other file is a real copy. Damage never writes into
    an image in place (see _overwrite), so the shared files stay intact."""
    if src.endswith(".png"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def _overwrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes without touching other hard links to it."""
    path.unlink()
    path.write_bytes(data)


@pytest.fixture(scope="module")
def pristine(demo_dir: Path, tmp_path_factory):
    """This module's own copy of the demo competition, the source of every row's links; at the
    end it must still equal the demo (no row wrote into a linked image)."""
    copy = shutil.copytree(demo_dir, tmp_path_factory.mktemp("pristine") / "digits")
    yield copy
    assert _snapshot(copy) == _snapshot(demo_dir)


@pytest.fixture(scope="module")
def trained(pristine: Path, tmp_path_factory) -> Path:
    """A folder holding inputs/digits and outputs/ with both folds of `demo` trained (tiny)."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(pristine, root / "inputs" / "digits", copy_function=_link_pngs)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        run_cli(train.main, ["--fold", "all", "--config", str(DEMO_CONFIG), *TINY])
    assert (root / "outputs" / "demo" / "fold1" / "done.json").is_file()
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """sha1 of every file under root, by relative path (__pycache__ left out)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


# ---------------------------------------------------------------- damage


def _train_ids(root: Path) -> list[str]:
    return pd.read_csv(root / "inputs/digits/train.csv", dtype=str)["id"].tolist()


def _train_png(root: Path, i: int = 0) -> Path:
    return root / "inputs/digits/train" / f"{_train_ids(root)[i]}.png"


def _test_png(root: Path, i: int = 0) -> Path:
    ids = pd.read_csv(root / "inputs/digits/sample_submission.csv", dtype=str)["id"]
    return root / "inputs/digits/test" / f"{ids[i]}.png"


def _edit_csv_line(line: int, edit: Callable[[str], str]) -> Callable[[Path], None]:
    """Damage: rewrite line `line` (1 = the header) of train.csv."""

    def damage(root: Path) -> None:
        path = root / "inputs/digits/train.csv"
        lines = path.read_text().splitlines()
        lines[line - 1] = edit(lines[line - 1])
        path.write_text("\n".join(lines) + "\n")

    return damage


def _duplicate_first_row(root: Path) -> None:
    path = root / "inputs/digits/train.csv"
    path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")


def _latin1_label(root: Path) -> None:
    """The first label becomes 'é' written in latin-1 (one byte 0xE9, invalid UTF-8)."""
    path = root / "inputs/digits/train.csv"
    header, first, rest = path.read_bytes().split(b"\n", 2)
    path.write_bytes(b"\n".join([header, first.split(b",")[0] + b",\xe9", rest]))


def _nan_labels(root: Path) -> None:
    """Three rows labelled with the literal text nan (enough images for every fold)."""
    for line in (2, 3, 4):
        _edit_csv_line(line, lambda s: s.split(",")[0] + ",nan")(root)


def _tag_lists(root: Path) -> None:
    """Planet-style labels: each image's digit as a tag, most with a parity tag and some with a
    size tag, space-separated in one column."""
    path = root / "inputs/digits/train.csv"
    df = pd.read_csv(path, dtype=str)
    extra = [("" if i % 5 == 0 else (" even" if int(d) % 2 == 0 else " odd")) + (" big" if int(d) > 6 and i % 3 else "")
             for i, d in enumerate(df["label"])]
    df["label"] = [f"d{d}{e}" for d, e in zip(df["label"], extra)]
    df.to_csv(path, index=False)


def _corrupt_png(root: Path) -> None:
    path = _train_png(root)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 32] = bytes(b ^ 0xFF for b in data[mid:mid + 32])
    _overwrite(path, bytes(data))


def _truncate(path: Path) -> None:
    _overwrite(path, path.read_bytes()[: path.stat().st_size // 2])


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _malicious_best(root: Path) -> None:
    marker = root / "PWNED"
    torch.save({"model": _RunsCode(f"touch {marker}"), "config": {}},
               root / "outputs/demo/fold0/best.pt")


def _malicious_last(root: Path) -> None:
    (root / "outputs/demo/fold0/done.json").unlink()
    marker = root / "PWNED"
    torch.save({"model": _RunsCode(f"touch {marker}"), "config": {}}, root / "outputs/demo/fold0/last.pt")


def _unfinished_empty_last(root: Path) -> None:
    fold = root / "outputs/demo/fold0"
    (fold / "done.json").unlink()
    (fold / "last.pt").write_bytes(b"")


def _val_png_of_fold0(root: Path) -> Path:
    folds = pd.read_csv(root / "outputs/folds/digits_k2_s42.csv", dtype=str)
    return root / "inputs/digits/train" / f"{folds.loc[folds['fold'] == '0', 'id'].iloc[0]}.png"


def _fold0_untrained_bad_image(root: Path) -> None:
    shutil.rmtree(root / "outputs/demo/fold0")
    _overwrite(_val_png_of_fold0(root), b"not a png")


def _second_member(root: Path) -> None:
    shutil.copytree(root / "outputs/demo", root / "outputs/demo_b")


def _old_submission(root: Path) -> None:
    (root / "submissions").mkdir()
    (root / "submissions/old.csv").write_text("id,label\n")


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    module: str                      # a key of MODULES (train, ensemble, folds, average, pseudo, report, ...)
    args: tuple                      # flags and overrides after the defaults (later overrides win); a callable
                                     # of the row's root gives one computed after the damage
    needles: tuple                   # substrings of the message; a tuple inside = any one of them
    world: str = "inputs"            # inputs: the demo copy only | trained: + trained outputs | empty
    damage: Callable[[Path], None] | None = None
    config: str | None = None        # --config (default: configs/demo.yaml)
    tiny: tuple[str, ...] = tuple(TINY)
    one_sentence: bool = False       # also: no sentence break ('. ' then a capital) in the message
    may_write: tuple[str, ...] = ()  # files the command may (re)write before it fails
    plain: bool = False              # argv is args alone: no --config and tiny overrides first (src.ledger,
                                     # src.kaggle_kernel's subcommands, src.score's positional file)


class Wrote(AssertionError):
    """(c) failed: the failing command created, changed or removed files."""


class NotOneSentence(AssertionError):
    """The message holds more than one sentence."""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def row(id_: str, *args, marks=(), **kw):
    return pytest.param(Row(*args, **kw), id=id_, marks=marks)


def _review(text: str):
    """Damage: a reviewed-labels file review.csv holding `text` (the header and rows of suspect_labels.csv)."""
    return lambda r: (r / "review.csv").write_text(text)


SUSPECTS_HEADER = "id,fold,label,predicted,prob,prob_label,loss,reviewed_label\n"


def _pseudo_table(edit: Callable[[pd.DataFrame], pd.DataFrame]):
    """Damage: a pseudo-label table as src.pseudo names it (sha1 of it and its .json in the name),
    made from the sample submission's ids with one-hot probabilities, then `edit`ed."""

    def damage(root: Path) -> None:
        ids = pd.read_csv(root / "inputs/digits/sample_submission.csv", dtype=str)["id"][:20]
        classes = [str(c) for c in range(10)]
        table = pd.DataFrame({"id": ids, "label": "3", "confidence": 1.0, "round": 1})
        for c in classes:
            table[f"prob_{c}"] = 1.0 if c == "3" else 0.0
        text = edit(table).to_csv(index=False).encode()
        meta = ('{"soft": false, "classes": ' + str(classes).replace("'", '"') + "}").encode()
        (root / "pl").mkdir()
        name = root / "pl" / f"bad_r1_{pseudo_digest(text, meta)}"
        name.with_suffix(".csv").write_bytes(text)
        name.with_suffix(".json").write_bytes(meta)

    return damage


PSEUDO = (lambda r: f"data.pseudo={next((r / 'pl').glob('*.csv'))}", "experiment.name=with_pseudo")
NOT_A_FOLDER = "data.cache_dir=inputs/digits/train.csv/cache"


def _unfinish_fold1(root: Path) -> None:
    (root / "outputs/demo/fold1/done.json").unlink()


def _coco(edit: Callable[[dict, Path], None] | None = None):
    """Damage: iNaturalist 2019's layout built at inputs/coco_inat from the digits copy (tests/conftest.py
    build_coco_competition), then train2019.json `edit`ed (the parsed JSON and the competition folder)."""

    def damage(root: Path) -> None:
        import json

        comp = build_coco_competition("inat", root / "inputs", root / "inputs" / "digits", n_train=20, n_test=6)
        if edit is not None:
            doc = json.loads((comp / "train2019.json").read_text())
            edit(doc, comp)
            (comp / "train2019.json").write_text(json.dumps(doc))

    return damage


def _fold1_filed_as_fold0(keep_fold1: bool = True, edit=None):
    """Damage: fold 1's run copied (or moved) into outputs/demo/fold0, as a pull under the wrong
    name leaves it; `edit(fold0)` then rewrites what the folder says of itself."""

    def damage(root: Path) -> None:
        exp = root / "outputs/demo"
        shutil.rmtree(exp / "fold0")
        (shutil.copytree if keep_fold1 else shutil.move)(exp / "fold1", exp / "fold0")
        if edit is not None:
            edit(exp / "fold0")

    return damage


def _says_fold0(fold: Path, oof_too: bool) -> None:
    """done.json (and, with oof_too, the OOF rows' fold column) edited to say fold 0."""
    done = fold / "done.json"
    done.write_text(done.read_text().replace('"fold": 1', '"fold": 0'))
    if oof_too:
        oof = pd.read_csv(fold / "oof.csv", dtype=str, keep_default_na=False)
        oof.assign(fold="0").to_csv(fold / "oof.csv", index=False)


def _repeat_an_oof_row(root: Path) -> None:
    path = root / "outputs/demo/fold0/oof.csv"
    path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")


def _pulled_output(fold_dir: str, edit=None):
    """Damage: pulled/, a training notebook's output as `kaggle kernels output` leaves it: the split
    and outputs/demo/fold0 holding the trained fold `fold_dir`; `edit(fold0)` then changes it."""

    def damage(root: Path) -> None:
        out = root / "pulled/outputs"
        shutil.copytree(root / "outputs/folds", out / "folds")
        shutil.copytree(root / "outputs/demo" / fold_dir, out / "demo/fold0")
        if edit is not None:
            edit(out / "demo/fold0")

    return damage


PULL = ("pull", "you/demo-train-fold0", "--config", str(DEMO_CONFIG), *TINY, "--pulled", "pulled")
MISFILED = ("outputs/demo/fold0 holds fold 1's run", "not fold 0's", "move the folder to fold1/",
            "python -m src.train --fold 0")


COCO = ("data.dir=inputs/coco_inat", *COCO_OVERRIDES["inat"])
REGR = ("data.dir=inputs/regr", "data.check_images=false", "model.name=test_resnet")
REGR_CONFIG = str(DEMO_CONFIG.with_name("demo_regression.yaml"))


def _regression(edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None, trained: bool = False):
    """Damage: PetFinder's layout built at inputs/regr (src.demo's regression digits, 24 training grids),
    train.csv `edit`ed; `trained`: both tiny folds of demo_regression trained there first."""

    def damage(root: Path) -> None:
        from src.demo import build_regression_demo

        comp = build_regression_demo(root / "inputs" / "regr", n_train=24, n_test=6)
        if edit is not None:
            (comp / "train.csv").write_text(edit(pd.read_csv(comp / "train.csv")).to_csv(index=False))
        if trained:
            run_cli(train.main, ["--fold", "all", "--config", REGR_CONFIG, *TINY, *REGR])

    return damage
F0 = ("--fold", "0")
SCALAR = "the command line"
WEIGHTS = ("--weights", "ensemble.weights")
ROWS = [
    # ---- images (train)
    row("corrupt-image", "train", F0, (lambda r: _train_png(r).name, "data.bad_images=skip"), damage=_corrupt_png),
    row("truncated-png", "train", F0, (lambda r: _train_png(r).name, "data.bad_images=skip"),
        damage=lambda r: _truncate(_train_png(r))),
    row("zero-byte-image", "train", F0, (lambda r: _train_png(r).name, "data.bad_images=skip"),
        damage=lambda r: _overwrite(_train_png(r), b"")),
    row("text-file-named-png", "train", F0, (lambda r: _train_png(r).name, "data.bad_images=skip"),
        damage=lambda r: _overwrite(_train_png(r), b"id,label\nthis is not an image\n")),
    row("missing-train-image", "train", F0, (lambda r: _train_png(r).stem, "tried extensions", "add the files"),
        damage=lambda r: _train_png(r).unlink()),
    # ---- train.csv
    row("missing-label-column", "train", F0, ("train.csv", "'label'", "data.label_col"),
        damage=_edit_csv_line(1, lambda s: "id,digit")),
    row("header-only-train-csv", "train", F0, ("train.csv", "no rows", "one row per image"),
        damage=lambda r: (r / "inputs/digits/train.csv").write_text("id,label\n")),
    row("duplicate-ids", "train", F0, ("train.csv", lambda r: _train_ids(r)[0], "twice"),
        damage=_duplicate_first_row),
    row("empty-label", "train", F0, ("train.csv", "row 5", "fill or drop"),
        damage=_edit_csv_line(5, lambda s: s.split(",")[0] + ",")),
    row("class-with-fewer-images-than-folds", "train", F0, ("'10' (1)", "2 folds", "data.n_folds"),
        damage=_edit_csv_line(2, lambda s: s.split(",")[0] + ",10")),
    # ---- test data (ensemble)
    row("missing-sample-submission", "ensemble", (), ("sample_submission.csv", "data.dir"), world="trained",
        damage=lambda r: (r / "inputs/digits/sample_submission.csv").unlink()),
    row("test-id-without-image", "ensemble", (), (lambda r: _test_png(r).stem, "inputs/digits/test", "add the files"),
        world="trained", damage=lambda r: _test_png(r).unlink()),
    row("corrupt-test-image", "ensemble", (), (lambda r: _test_png(r).name, "replace or remove"), world="trained",
        damage=lambda r: _overwrite(_test_png(r), b"id,label\nthis is not an image\n")),
    row("corrupt-test-image-no-cache", "ensemble", ("data.cache=false",), (lambda r: _test_png(r).name,),
        world="trained", damage=lambda r: _truncate(_test_png(r))),
    # ---- configs
    row("unknown-config-key", "train", F0 + ("train.epoch=3",), ("train.epoch", "did you mean 'epochs'", SCALAR),
        world="trained"),
    row("wrong-type", "train", F0 + ("train.epochs=three",), ("train.epochs", "'three'", "integer", SCALAR),
        world="trained"),
    row("malformed-yaml-config", "train", F0, ("bad.yaml", "not valid YAML", "fix the file"), world="trained",
        config="bad.yaml", damage=lambda r: (r / "bad.yaml").write_text("train:\n  epochs: [1, 2\n")),
    row("missing-config-file", "train", F0, ("configs/nope.yaml", "--config"), world="trained",
        config="configs/nope.yaml"),
    row("fold-out-of-range", "train", ("--fold", "7"), ("--fold 7", "0..1"), world="trained"),
    # ---- checkpoints (ensemble)
    row("truncated-best-pt", "ensemble", (), ("outputs/demo/fold0/best.pt", "corrupt"), world="trained",
        damage=lambda r: _truncate(r / "outputs/demo/fold0/best.pt")),
    row("malicious-checkpoint", "ensemble", (), ("outputs/demo/fold0/best.pt", "replaced", "retrain the fold"),
        world="trained", damage=_malicious_best, one_sentence=True),
    row("malicious-last-pt-resume", "train", F0 + ("--resume",), ("outputs/demo/fold0/last.pt", "could run code",
        "--force"), world="trained", damage=_malicious_last, one_sentence=True),
    row("unknown-tta-view", "ensemble", ("--tta", "blur"), ("'blur'", "d4", "scale<f>"), world="trained"),
    # ---- issue 9
    row("weights-zero", "ensemble", ("--weights", "0"), (WEIGHTS, ("non-negative", "positive")),
        world="trained"),
    row("weights-negative", "ensemble", ("--experiments", "demo", "demo_b", "--weights", "1,-1"),
        (WEIGHTS, ("non-negative", "negative")), world="trained", damage=_second_member),
    row("tta-scale0", "ensemble", ("--tta", "scale0"), ("scale0", "outside 0.25..4", "scale1.15"),
        world="trained"),
    row("out-overwrites-input", "ensemble", ("--out", "inputs/digits/sample_submission.csv"),
        ("inputs/digits/sample_submission.csv", "--out"), world="trained"),
    row("out-is-a-folder", "ensemble", ("--out", "submissions"), ("submissions", ("folder", "directory"), "--out"),
        world="trained", damage=_old_submission),
    row("label-literal-nan", "train", F0, ("train.csv", "nan"), damage=_nan_labels),
    row("tag-list-labels", "train", F0, ("train.csv", "tags", "data.task=multilabel"), damage=_tag_lists),
    row("per-image-f2-on-single-labels", "train", F0 + ("metric.name=f2_samples",), ("f2_samples", "f1_macro")),
    row("binary-pauc-on-10-classes-in-the-ensemble", "ensemble", ("metric.name=pauc@0.9",), ("pauc@0.9", "10 classes"),
        world="trained"),
    row("binary-pauc-on-10-classes", "train", F0 + ("metric.name=pauc",), ("pauc", "10 classes", "roc_auc")),
    row("unknown-metric", "train", F0 + ("metric.name=f1",), ("metric.name", "f1_macro", "map@<k>")),
    *[
        row(f"out-of-range-{kv}", "train", F0 + (kv,), (kv.split("=")[0], SCALAR))
        for kv in ("loader.batch_size=0", "loader.num_workers=-1", "optim.lr=-1", "aug.img_size=-5",
                   "train.accum_steps=0", "aug.crop_pct=0", "train.epochs=0")
    ],
    row("non-utf8-train-csv", "train", F0, ("train.csv", ("UTF-8", "utf-8")),
        damage=_latin1_label),
    row("zero-byte-last-pt-resume", "train", F0 + ("--resume",), ("outputs/demo/fold0/last.pt", "--force"),
        world="trained", damage=_unfinished_empty_last),
    row("corrupt-image-in-worker", "train", F0 + ("data.check_images=false", "loader.num_workers=1"),
        (lambda r: _val_png_of_fold0(r).name, ("data.bad_images", "replace")),
        world="trained", damage=_fold0_untrained_bad_image, may_write=("outputs/demo/config.yaml", "outputs/demo/fold0/.lock")),
    row("missing-data-dir", "train", F0, ("inputs/digits", "python -m src.demo"), world="empty",
        tiny=tuple(t for t in TINY if not t.startswith("data.dir="))),
    # ---- issue 20 C: one sentence, not a traceback
    row("cache-dir-not-a-folder", "train", F0 + (NOT_A_FOLDER,), ("inputs/digits/train.csv/cache", "data.cache=false")),
    row("cache-dir-not-a-folder-in-the-ensemble", "ensemble", (NOT_A_FOLDER,),
        ("inputs/digits/train.csv/cache", "data.cache=false"), world="trained"),
    row("cache-dir-empty", "train", F0 + ("data.cache_dir=''",), ("data.cache_dir", "empty", "null")),
    row("relabel-zero-byte-file", "folds", ("--relabel", "review.csv"), ("review.csv", "empty"), damage=_review("")),
    row("relabel-header-only", "folds", ("--relabel", "review.csv"), ("review.csv", "reviews no label"),
        damage=_review(SUSPECTS_HEADER)),
    row("relabel-nothing-reviewed", "folds", ("--relabel", "review.csv"), ("review.csv", "reviews no label"),
        damage=_review(SUSPECTS_HEADER + "digit_0005,1,5,9,0.98,0.005,5.28,\n")),
    row("pseudo-labels-not-classes", "train", F0 + PSEUDO, ("data.pseudo", "['zebra']", "python -m src.pseudo"),
        world="trained", damage=_pseudo_table(lambda t: t.assign(label="zebra"))),
    row("pseudo-probabilities-missing", "train", F0 + PSEUDO, ("data.pseudo", "row 2", "python -m src.pseudo"),
        world="trained", damage=_pseudo_table(lambda t: t.assign(prob_3=[None] + [1.0] * (len(t) - 1)))),
    row("pseudo-probabilities-negative", "train", F0 + PSEUDO, ("data.pseudo", "outside [0, 1]"), world="trained",
        damage=_pseudo_table(lambda t: t.assign(prob_3=1.5, prob_4=-0.5))),
    row("pseudo-probabilities-above-one", "train", F0 + PSEUDO, ("data.pseudo", "outside [0, 1]"), world="trained",
        damage=_pseudo_table(lambda t: t.assign(prob_3=2.0))),
    row("pseudo-probabilities-not-summing-to-one", "train", F0 + PSEUDO, ("data.pseudo", "sum to 1"),
        world="trained", damage=_pseudo_table(lambda t: t.assign(prob_3=0.5))),
    row("pseudo-ids-repeated", "train", F0 + PSEUDO, ("data.pseudo", "more than once"), world="trained",
        damage=_pseudo_table(lambda t: pd.concat([t, t.head(1)]))),
    row("average-top-negative", "average", ("--experiment", "demo", "--top", "-1"), ("--top -1", "keep_top"),
        world="trained"),
    row("average-with-a-missing-fold", "average", ("--experiment", "demo", "--top", "2"),
        ("[1]", "python -m src.train --fold K", "needs every fold"), world="trained", damage=_unfinish_fold1),
    row("distill-from-a-teacher-with-a-missing-fold", "train",
        F0 + ("loss.distill_from=demo", "experiment.name=student"), ("[1]", "python -m src.train --fold K",
                                                                     "teacher fold"),
        world="trained", damage=_unfinish_fold1),
    # ---- issue 31.1: nothing is written inside outputs/<experiment>/, inputs/ or over another command's record
    *[
        row(f"ensemble-out-{name}", "ensemble", ("--out", out), ("--out", out, what, "submissions/"), world="trained",
            damage=damage)
        for name, out, what, damage in [
            ("in-a-fold-folder", "outputs/demo/fold0/oof.csv", "the run folder", None),
            ("in-the-run-folder", "outputs/demo/sub.csv", "run folder of experiment demo", None),
            ("in-another-experiment", "outputs/demo_b/sub.csv", "the run folder", _second_member),
            ("in-the-splits", "outputs/folds/sub.csv", "the splits", None),
            ("in-the-image-cache", "outputs/cache/sub.csv", "the image cache", None),
            ("in-inputs", "inputs/sub.csv", "inputs/, the folder holding the competitions", None),
            ("in-configs", str(DEMO_CONFIG.parent / "sub.csv"), "the configs", None),
            ("over-a-ledger", "submissions/ledger.csv", "a submission ledger",
             lambda r: (r / "submissions").mkdir() or (r / "submissions/ledger.csv").write_text("time,file\n")),
        ]
    ],
    row("ensemble-out-over-a-pseudo-label-table", "ensemble", ("--out", lambda r: str(next((r / "pl").glob("*.csv")))),
        ("--out", "pseudo-label table", "submissions/"), world="trained", damage=_pseudo_table(lambda t: t)),
    row("ensemble-ledger-beside-is-a-folder", "ensemble", ("--out", "submissions/a.csv"),
        ("--out", "submissions/ledger.csv", "folder"), world="trained",
        damage=lambda r: (r / "submissions/ledger.csv").mkdir(parents=True)),
    row("probe-out-in-a-fold-folder", "probe", ("--out", "outputs/demo/fold0/probe.csv"),
        ("--out", "outputs/demo/fold0/probe.csv", "the run folder", "submissions/"), world="trained"),
    row("probe-out-over-a-recorded-submission", "probe", ("--out", "submissions/a.csv"),
        ("--out", "submissions/a.csv", "a submission the ledger recorded"), world="trained",
        damage=lambda r: run_cli(ensemble.main, ["--config", str(DEMO_CONFIG), *TINY, "--out", "submissions/a.csv"])),
    row("pseudo-out-in-a-fold-folder", "pseudo", ("--experiments", "demo", "--out", "outputs/demo/fold0/pl.csv"),
        ("--out", "outputs/demo/fold0/pl.csv", "the run folder", "outputs/pseudo/"), world="trained"),
    row("report-compare-out-in-a-run-folder", "report", ("--compare", "demo", "demo_b", "--out", "outputs/demo_b"),
        ("--out", "outputs/demo_b", "the run folder", "outputs/compare/"), world="trained", damage=_second_member),
    *[
        row(f"kaggle-{verb}-out-{name}", "kaggle_kernel",
            (verb, "--config", str(DEMO_CONFIG), *TINY, *extra, "--out", out), ("--out", out, what),
            world="trained", plain=True, damage=damage)
        for verb, extra, name, out, what, damage in [
            ("build", ("--experiments", "demo"), "a-run-folder", "outputs/demo", "the run folder", None),
            ("build", ("--experiments", "demo"), "holding-run-folders", "outputs",
             ("the image cache", "the splits", "run folder of experiment demo"), None),
            ("build", ("--experiments", "demo"), "the-working-folder", ".", "the working folder", None),
            ("build", ("--experiments", "demo"), "holding-other-files", "submissions", "old.csv", _old_submission),
            ("train", (), "a-fold-folder", "outputs/demo/fold0", "the run folder", None),
        ]
    ],
    row("kaggle-rehearse-train-root-in-a-run-folder", "kaggle_kernel",
        ("rehearse-train", "--config", str(DEMO_CONFIG), *TINY, "--kaggle-root", "outputs/demo"),
        ("--kaggle-root", "outputs/demo", "the run folder"), world="trained", plain=True),
    row("ledger-in-a-fold-folder", "ledger", ("--ledger", "outputs/demo/fold0/ledger.csv", "--lb", "a.csv", "0.9"),
        ("--ledger", "outputs/demo/fold0/ledger.csv", "the run folder", "submissions/ledger.csv"), world="trained",
        plain=True),

    # ---- issue 31.3: a fold filed under another fold's name
    row("fold1-filed-as-fold0-ensemble", "ensemble", (), MISFILED, world="trained", damage=_fold1_filed_as_fold0(),
        one_sentence=True),
    row("fold1-moved-to-fold0-ensemble-missing-folds-warn", "ensemble", ("ensemble.missing_folds=warn",), MISFILED,
        world="trained", damage=_fold1_filed_as_fold0(keep_fold1=False)),
    row("fold1-filed-as-fold0-report", "report", (), MISFILED, world="trained", damage=_fold1_filed_as_fold0()),
    row("fold1-filed-as-fold0-average", "average", ("--experiment", "demo", "--top", "1"), MISFILED, world="trained",
        damage=_fold1_filed_as_fold0()),
    row("fold1-filed-as-fold0-pseudo", "pseudo", ("--experiments", "demo"), MISFILED, world="trained",
        damage=_fold1_filed_as_fold0()),
    row("fold1-filed-as-fold0-bundle", "kaggle_kernel", ("build", "--config", str(DEMO_CONFIG), *TINY, "--experiments",
        "demo", "--no-wheels"), MISFILED, world="trained", damage=_fold1_filed_as_fold0(), plain=True),
    row("fold1-filed-as-fold0-done-json-edited", "ensemble", (),
        ("outputs/demo/fold0", "OOF rows of fold 1", "fold column", "not fold 0's", "move the folder to fold1/"),
        world="trained", damage=_fold1_filed_as_fold0(edit=lambda f: _says_fold0(f, oof_too=False))),
    row("fold1-filed-as-fold0-done-and-oof-edited", "ensemble", (),
        ("outputs/demo/fold0", "the split puts elsewhere", "in fold 1", "not fold 0's", "python -m src.train --fold 0"),
        world="trained", damage=_fold1_filed_as_fold0(edit=lambda f: _says_fold0(f, oof_too=True))),
    row("oof-rows-repeated", "ensemble", (), ("experiment demo", "repeat 1 ids", "outputs/demo/fold0/oof.csv",
        "one validation fold"), world="trained", damage=_repeat_an_oof_row, one_sentence=True),
    row("pull-fold1-as-fold0", "kaggle_kernel", PULL, ("fold0/ in the output of you/demo-train-fold0",
        "fold 1's run", "nothing was installed", "--pulled DIR"), world="trained", damage=_pulled_output("fold1"),
        plain=True, one_sentence=True),
    row("pull-unfinished-without-last-pt", "kaggle_kernel", PULL, ("fold 0 in the output of you/demo-train-fold0",
        "no done.json", "no last.pt", "push it again"), world="trained", plain=True,
        damage=_pulled_output("fold0", edit=lambda f: [(f / n).unlink(missing_ok=True) for n in ("done.json", "last.pt")])),
    row("pull-unfinished-with-last-pt", "kaggle_kernel", PULL, ("no done.json", "left last.pt", "resumes from last.pt"),
        world="trained", plain=True,
        damage=_pulled_output("fold0", edit=lambda f: (f / "done.json").unlink())),

    # ---- issue 31.4 and 31.6: a diverged fold, a label never positive
    row("validation-diverged", "train", F0 + ("--allow-mixed-configs", "optim.lr=1e6"),
        ("fold 0 at epoch 0 diverged", "validation loss is nan", "optim.lr", "--lr-find"), world="trained",
        damage=lambda r: shutil.rmtree(r / "outputs/demo/fold0"),
        may_write=("outputs/demo/config.yaml", "outputs/demo/fold0/.lock")),

    # ---- issue 31.8: the sidecars of a recorded submission
    # two identical members: other weights give the same CSV bytes from another blend; the blend JSON
    # is gone (written before blends were), and for an old ledger the row has no sidecars column
    *[
        row(f"ensemble-replaces-the-sidecars-of-a-recorded-submission{tag}", "ensemble",
            ("--experiments", "demo", "demo_b", "--weights", "3,1", "--out", "submissions/a.csv"),
            ("--out", "submissions/a.csv", "recorded", "a.blend.json", "a_probs.csv", "another --out"),
            world="trained", damage=lambda r, old=old: (
                _second_member(r),
                run_cli(ensemble.main, ["--config", str(DEMO_CONFIG), *TINY, "--experiments", "demo", "demo_b",
                                        "--weights", "1,1", "--out", "submissions/a.csv"]),
                (r / "submissions/a.blend.json").unlink(),
                old and pd.read_csv(r / "submissions/ledger.csv", dtype=str, keep_default_na=False).drop(
                    columns="sidecars", errors="ignore").to_csv(r / "submissions/ledger.csv", index=False)))
        for tag, old in (("", False), ("-of-an-old-ledger", True))
    ],
    row("ledger-lb-after-a-sidecar-changed", "ledger",
        ("--ledger", "submissions/ledger.csv", "--lb", "submissions/a.csv", "0.9"),
        ("submissions/a_probs.csv", "no longer holds", "src.ensemble"), world="trained", plain=True,
        damage=lambda r: (run_cli(ensemble.main, ["--config", str(DEMO_CONFIG), *TINY, "--out", "submissions/a.csv"]),
                          (r / "submissions/a_probs.csv").write_text("id,0\n"))),

    # ---- issue 31, the smaller ones
    row("min-labels-on-a-multiclass-task", "train", F0 + ("ensemble.min_labels=1",),
        ("ensemble.min_labels=1", "data.task=multilabel", "ensemble.min_labels=0")),
    row("min-labels-on-a-multiclass-ensemble", "ensemble", ("--tta", "hflip", "ensemble.min_labels=1"),
        ("ensemble.min_labels=1", "multiclass", "ensemble.min_labels=0"), world="trained"),

    # ---- issue 29: COCO-style annotation files (data.layout=coco)
    row("coco-json-without-categories", "train", F0 + COCO, ("inputs/coco_inat/train2019.json", "categories"),
        damage=_coco(lambda d, c: d.pop("categories"))),
    row("coco-unknown-category-id", "train", F0 + COCO, ("train2019.json", "['999']", "categories do not list"),
        damage=_coco(lambda d, c: d["annotations"][0].update(category_id=999))),
    row("coco-image-not-on-disk", "train", F0 + COCO, ("not on disk", "relative to inputs/coco_inat"),
        damage=_coco(lambda d, c: (c / d["images"][0]["file_name"]).unlink())),
    row("coco-not-json", "train", F0 + COCO, ("train2019.json", "not valid JSON"),
        damage=lambda r: (_coco()(r), (r / "inputs/coco_inat/train2019.json").write_text('{"images": ['))),
    row("coco-without-its-annotation-file", "train", F0 + ("data.layout=coco",),
        ("data.annotations", "train2019.json")),
    # ---- issue 29: DICOM
    row("dicom-corrupt", "train", F0, ("digit_0000.dcm", "data.bad_images=skip"),
        damage=lambda r: _dicom_for_first_png(r, "junk")),
    row("dicom-without-pixel-data", "train", F0, ("digit_0000.dcm", "data.bad_images=skip"),
        damage=lambda r: _dicom_for_first_png(r, "no pixels")),
    row("dicom-compressed-as-nothing-decodes", "train", F0 + ("data.bad_images=skip",),
        ("digit_0000.dcm", "MPEG2", "convert the files"), damage=lambda r: _dicom_for_first_png(r, "mpeg2")),
    row("dicom-window-width-zero", "train", F0 + ("data.dicom_window=[40,0]",), ("data.dicom_window", "width below 1", SCALAR)),
    # ---- issue 30: python -m src.init (the folder read into a config; nothing written on a refusal)
    row("init-not-a-folder", "init", ("inputs/nothing",), ("inputs/nothing is not a folder", "unzip"), plain=True),
    row("init-archive-not-extracted", "init", ("inputs/digits",), ("extra.zip is not extracted", "unzip -q"),
        plain=True, damage=lambda r: (r / "inputs/digits/extra.zip").write_bytes(b"PK")),
    row("init-no-sample-submission", "init", ("inputs/digits",), ("no sample submission", "data.sample_submission"),
        plain=True, damage=lambda r: (r / "inputs/digits/sample_submission.csv").unlink()),
    row("init-grades-or-classes", "init", ("inputs/digits", "--competition", "an-unknown-one"),
        ("read two ways", "data.task=ordinal", "data.task=multiclass", "--guess"), plain=True),
    row("init-over-a-hand-written-config", "init", ("inputs/digits", "--force"), ("configs/digits.yaml",
        "not written by src.init"), plain=True, damage=lambda r: _write(r / "configs/digits.yaml", "base: base.yaml\n")),
    row("init-unknown-key", "init", ("inputs/digits", "data.colour=red"), ("data.colour", "not a config key"),
        plain=True),
    row("init-pixels-no-square", "init", ("inputs/pixels",), ("40 pixel values a row", "no square image",
        "data.pixel_shape=[H,W]"), plain=True, damage=lambda r: _pixel_world(r, keep=40)),
    row("init-pixel-test-without-the-columns", "init", ("inputs/pixels",), ("inputs/pixels/test.csv lacks",
        "pixel0..pixel63", "same columns"), plain=True, damage=lambda r: _pixel_world(r, test_keeps=63)),
    # ---- issue 29: regression
    row("regression-without-target-range", "train", F0 + REGR + ("data.target_range=null",),
        ("data.target_range", "[1, 100]"), damage=_regression(), config=REGR_CONFIG),
    row("regression-target-not-a-number", "train", F0 + REGR, ("inputs/regr/train.csv row 2", "'cute'", "not a number"),
        damage=_regression(lambda t: t.assign(Pawpularity=["cute", *t["Pawpularity"][1:]])), config=REGR_CONFIG),
    row("regression-target-outside-range", "train", F0 + REGR, ("row 2", "'250'", "outside data.target_range [1, 100]"),
        damage=_regression(lambda t: t.assign(Pawpularity=[250, *t["Pawpularity"][1:]])), config=REGR_CONFIG),
    row("regression-classification-metric", "train", F0 + REGR + ("metric.name=accuracy",),
        ("metric.name=accuracy", "rmse"), damage=_regression(), config=REGR_CONFIG),
    row("regression-classification-loss", "train", F0 + REGR + ("loss.name=ce",), ("loss.name=ce", "mse, smooth_l1 or bce"),
        damage=_regression(), config=REGR_CONFIG),
    row("regression-distillation", "train", F0 + REGR + ("loss.distill_from=teacher",), ("loss.distill_from",),
        damage=_regression(), config=REGR_CONFIG),
    row("regression-metric-on-classes", "train", F0 + ("metric.name=rmse",), ("metric.name=rmse", "data.task=regression")),
    row("regression-bce-on-classes", "train", F0 + ("loss.name=bce",), ("loss.name=bce", "data.task=regression")),
    row("regression-range-on-classes", "train", F0 + ("data.target_range=[1,100]",), ("data.target_range", "null")),
    row("regression-classifier-probe", "probe", REGR + ("--classifier", "logreg"),
        ("--classifier logreg", "regression targets", "--classifier ridge"), damage=_regression(), config=REGR_CONFIG),
    row("ridge-probe-on-classes", "probe", ("--classifier", "ridge"),
        ("--classifier ridge", "multiclass targets", "--classifier logreg or rf or svm")),
    row("regression-voting", "ensemble", REGR + ("--voting", "geometric", "--tta", "identity", "vflip"),
        ("ensemble.voting=geometric", "soft"), damage=_regression(trained=True), config=REGR_CONFIG),
    row("regression-format", "ensemble", REGR + ("--format", "label", "--tta", "identity", "vflip"),
        ("ensemble.format=label", "value"), damage=_regression(trained=True), config=REGR_CONFIG),
    row("regression-classifier-stacker", "ensemble", REGR + ("--stack", "logreg"),
        ("--stack logreg", "regression targets", "--stack ridge"), damage=_regression(trained=True), config=REGR_CONFIG),
    row("ridge-stacker-on-classes", "ensemble", ("--stack", "ridge"), ("--stack ridge", "multiclass targets",
        "--stack logreg"), world="trained"),
    row("regression-pseudo-labels", "pseudo", REGR, ("src.pseudo", "no confidence", "src.ensemble"),
        damage=_regression(trained=True), config=REGR_CONFIG),
    # ---- issue 29: image + metadata (data.meta_cols)
    row("meta-without-test-table", "train", F0 + REGR + ("data.meta_cols=auto",), ("inputs/regr/test.csv", "data.test_csv"),
        damage=lambda r: _meta_world(r, lambda t: None), config=REGR_CONFIG),
    row("meta-column-in-neither-table", "train", F0 + REGR + ("data.meta_cols=[Eyes,Age]",), ("['Age']", "train.csv"),
        damage=_regression(), config=REGR_CONFIG),
    row("meta-column-not-in-test-table", "train", F0 + REGR + ("data.meta_cols=[Eyes,Blur]",), ("['Blur']", "test.csv"),
        damage=lambda r: _meta_world(r, lambda t: t.drop(columns="Blur")), config=REGR_CONFIG),
    row("meta-sample-ids-not-in-test-table", "train", F0 + REGR + ("data.meta_cols=auto",), ("2 sample submission ids", "test.csv"),
        damage=lambda r: _meta_world(r, lambda t: t.iloc[2:]), config=REGR_CONFIG),
    row("meta-with-mixup", "train", F0 + REGR + ("data.meta_cols=auto",) + ("train.mixup=0.2",), ("train.mixup", "data.meta_cols=null"),
        damage=_regression(), config=REGR_CONFIG),
    row("meta-without-csv-layout", "train", F0 + ("data.layout=imagefolder", "data.meta_cols=auto"),
        ("data.meta_cols", "data.layout=csv")),
    row("meta-ensemble-without-test-table", "ensemble", REGR + ("--tta", "identity", "vflip"),
        ("inputs/regr/test.csv", "data.test_csv"), damage=lambda r: _meta_world(r, lambda t: None, trained=True),
        config=REGR_CONFIG),
    row("meta-ensemble-test-table-lacks-a-column", "ensemble", REGR + ("--tta", "identity", "vflip"),
        ("test.csv", "['Blur']", "fold 0"), damage=lambda r: _meta_world(r, lambda t: t.drop(columns="Blur"), trained=True),
        config=REGR_CONFIG),
    row("meta-checkpoint-differs-from-config", "ensemble", REGR + ("--tta", "identity", "vflip"),
        ("best.pt", "data.meta_cols=None", "['Eyes']"), damage=lambda r: _meta_claimed_by_config(r),
        config=REGR_CONFIG),
    row("meta-probe-without-meta-cols", "probe", ("--meta",), ("src.probe --meta", "data.meta_cols=auto")),
    row("meta-probe-with-a-submission", "probe", ("--meta", "--out", "submissions/m.csv"), ("--meta", "drop --out")),
    row("meta-report", "report", ("data.dir=inputs/digits_meta",), ("src.report", "Grad-CAM", "data.meta_cols"),
        damage=lambda r: _meta_digits(r)),
    # ---- issue 29: grouped answers (data.answer_id)
    # (the grouped world's overrides, named here: the rows below are the first to use them)
    row("grouped-unknown-template-field", "train", F0 + (GROUPED_ROW := (
        "data.dir=inputs/grouped", "data.answer_id={patient_id}_{laterality}", "data.group_col=patient_id",
        "data.answer_col=prediction_id")) + ("data.answer_id={patient}_{laterality}",),
        ("data.answer_id", "'patient'", "inputs/grouped/train.csv"), damage=lambda r: _grouped(r)),
    row("grouped-answer-labels-disagree", "train", F0 + GROUPED_ROW, ("different labels", "data.answer_id"),
        damage=lambda r: _grouped(r, _two_labels_in_an_answer)),
    row("grouped-answer-spans-groups", "train", F0 + GROUPED_ROW + ("data.group_col=site",),
        ("spans the groups", "data.group_col"), damage=lambda r: _grouped(r, _answer_on_two_sites)),
    row("grouped-answer-without-test-images", "ensemble", GROUPED_ROW, ("1 answer of the sample submission", "no image",
        "inputs/grouped/test.csv"), damage=lambda r: _grouped(r, _first_answer_unlisted)),
    row("grouped-missing-test-csv", "ensemble", GROUPED_ROW, ("inputs/grouped/test.csv", "data.test_csv"),
        damage=lambda r: _grouped(r, lambda c: (c / "test.csv").unlink())),
    row("grouped-multiclass-max", "train", F0 + GROUPED_ROW + ("data.aggregate=max",),
        ("data.aggregate=max", "data.aggregate=mean", "multiclass")),
    row("grouped-probe", "probe", GROUPED_ROW, ("src.probe", "data.answer_id"), damage=lambda r: _grouped(r)),
    row("grouped-relabel-splits-an-answer", "folds", GROUPED_ROW + ("--relabel", "review.csv"),
        ("review.csv", "different labels", "data.answer_id"), damage=lambda r: _grouped(r, _review_one_image(r))),
    row("grouped-pseudo-labels", "pseudo", GROUPED_ROW, ("src.pseudo", "predicts answers", "data.answer_id"),
        damage=lambda r: _grouped(r, trained=True)),
    # ---- issue 29: pixel tables, arrays and containers
    row("pixels-count-not-the-shape", "train", F0 + ("data.dir=inputs/pixels", "data.layout=pixels", "data.pixel_shape=[7,7]",
                                                     "data.id_col=ImageId", "data.label_col=Label"),
        ("inputs/pixels/train.csv", "64 pixel values", "holds 49", "[8, 8]"), damage=lambda r: _pixel_world(r)),
    row("pixels-no-pixel-columns", "train", F0 + ("data.dir=inputs/pixels", "data.layout=pixels", "data.pixel_shape=[8,8]",
                                                  "data.id_col=ImageId", "data.label_col=Label", "data.pixel_prefix=px"),
        ("inputs/pixels/train.csv", "no pixel columns px0", "data.pixel_prefix"), damage=lambda r: _pixel_world(r)),
    row("pixels-layout-without-shape", "train", F0 + ("data.layout=pixels",), ("data.pixel_shape", "[28, 28]")),
    row("image-store-id-without-key", "train", F0 + ("data.image_store=train-image.hdf5",),
        ("1 training id has no key in inputs/digits/train-image.hdf5", "fix the ids"),
        damage=lambda r: _store_missing_one(r)),
    # ---- issue 29: one-hot classes, new_whale, graded subset, regression probe and stacking
    row("one-hot-row-with-two-classes", "train", F0 + ("data.label_cols=all",), ("row 2", "2 ones", "data.task=multilabel"),
        damage=lambda r: _one_hot_train(r, two_in_first=True)),
    row("one-hot-row-without-a-class", "train", F0 + ("data.label_cols=all",), ("row 2", "0 ones", "give each row its class"),
        damage=lambda r: _one_hot_train(r, none_in_first=True)),
    row("one-hot-columns-under-ordinal", "train", F0 + ("data.label_cols=all", "data.task=ordinal"),
        ("data.label_cols", "names no grades", "null")),
    row("new-label-on-a-label-submission", "ensemble", ("ensemble.new_label=3",),
        ("ensemble.new_label=3", "format is label, not topk", "null"), world="trained"),
    row("new-label-not-a-class", "ensemble", ("--format", "topk", "ensemble.new_label=new_whale"),
        ("ensemble.new_label=new_whale", "not a class"), world="trained"),
    row("graded-sample-column-not-a-class", "ensemble", ("--tta", "identity"), ("['zebra']", "not classes of the split"),
        world="trained", damage=lambda r: _sample_columns(r, ["0", "1", "zebra"])),
]


@pytest.mark.parametrize("case", ROWS)
def test_user_mistake_is_one_sentence_and_writes_nothing(case: Row, pristine: Path, tmp_path: Path, monkeypatch,
                                                         capsys, request):
    if case.world != "empty":
        shutil.copytree(pristine, tmp_path / "inputs" / "digits", copy_function=_link_pngs)
    if case.world == "trained":
        shutil.copytree(request.getfixturevalue("trained") / "outputs", tmp_path / "outputs")
    monkeypatch.chdir(tmp_path)
    if case.damage is not None:
        case.damage(tmp_path)
    needles = [n(tmp_path) if callable(n) else n for n in case.needles]
    args = [a(tmp_path) if callable(a) else a for a in case.args]
    argv = args if case.plain else ["--config", case.config or str(DEMO_CONFIG), *case.tiny, *args]
    before = _snapshot(tmp_path)
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        run_cli(MODULES[case.module].main, argv)

    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        options = needle if isinstance(needle, tuple) else (needle,)
        assert any(o in lines[0] for o in options), f"{options} not in: {lines[0]}"
    assert not (tmp_path / "PWNED").exists(), "loading a checkpoint ran code"
    after = _snapshot(tmp_path)
    diff = {
        "written": sorted(after.keys() - before.keys()),
        "lost": sorted(before.keys() - after.keys()),
        "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
    }
    diff = {k: [f for f in v if f not in case.may_write] for k, v in diff.items()}
    if any(diff.values()):
        raise Wrote(str(diff))
    if case.one_sentence and re.search(r"[.!?] +[A-Z]", lines[0]):
        raise NotOneSentence(lines[0])
    said = reliability_table.entry(request.node.callspec.id, case.module, args, case.config, case.plain,
                                   lines[0].removeprefix("error: "), tmp_path)
    if os.environ.get("RELIABILITY_RECORD"):
        reliability_table.record(os.environ["RELIABILITY_RECORD"], said)
    else:
        assert reliability_table.documented().get(said["case"]) == said, (
            f"docs/reliability.md does not say what this row says; regenerate it: {reliability_table.REGENERATE}")


def test_the_reliability_page_lists_every_row_in_order():
    assert list(reliability_table.documented()) == [p.id for p in ROWS], (
        f"docs/reliability.md does not list the rows of this table; regenerate it: {reliability_table.REGENERATE}")


# ---- issue 29: DICOM (the damage of its rows, found by name when a row runs)


def _dicom_for_first_png(root: Path, kind: str, split: str = "train") -> None:
    """Damage: the first training PNG (or test PNG) becomes a .dcm of the same name: `junk` bytes,
    a DICOM with `no pixels`, or one whose pixel data is `mpeg2` compressed (nothing decodes it)."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    png = _train_png(root) if split == "train" else _test_png(root)
    dcm = png.with_suffix(".dcm")
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 16
    png.unlink()
    if kind == "junk":
        dcm.write_bytes(b"not a DICOM file" * 16)
        return
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if kind != "mpeg2" else pydicom.uid.MPEG2MPML
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if kind == "mpeg2":
        ds.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
        ds["PixelData"].VR = "OB"
    ds.save_as(dcm, enforce_file_format=True)


# ---- issue 29: image + metadata (data.meta_cols) (the damage of its rows)

META = ("data.meta_cols=auto",)


def _meta_world(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None], trained: bool = False) -> None:
    """Damage: PetFinder's layout at inputs/regr (its twelve flags in train.csv and test.csv), both tiny
    folds trained with data.meta_cols=auto when `trained`, then test.csv `edit`ed (None: removed)."""
    _regression()(root)
    if trained:
        run_cli(train.main, ["--fold", "all", "--config", REGR_CONFIG, *TINY, *REGR, *META])
    path = root / "inputs" / "regr" / "test.csv"
    table = edit(pd.read_csv(path, dtype=str))
    path.unlink()
    if table is not None:
        table.to_csv(path, index=False)


def _meta_digits(root: Path) -> None:
    """Damage: inputs/digits_meta, the digits with metadata columns (conftest.add_meta_columns), both tiny
    folds trained there with data.meta_cols=auto."""
    from conftest import add_meta_columns

    add_meta_columns(root / "inputs" / "digits", root / "inputs" / "digits_meta")
    run_cli(train.main, ["--fold", "all", "--config", str(DEMO_CONFIG), *TINY, "data.dir=inputs/digits_meta", *META])


def _meta_claimed_by_config(root: Path) -> None:
    """Damage: image-only folds whose done.json configs claim data.meta_cols=[Eyes] (their best.pt has none)."""
    import json

    _regression(trained=True)(root)
    for done in sorted((root / "outputs").glob("demo_regression/fold*/done.json")):
        record = json.loads(done.read_text())
        record["config"]["data"]["meta_cols"] = ["Eyes"]
        done.write_text(json.dumps(record))


# ---- issue 29: grouped answers (data.answer_id) (the damage of its rows)
def _grouped(root: Path, edit: Callable[[Path], None] | None = None, trained: bool = False) -> None:
    """Damage: inputs/grouped, the demo's images as answers of 1-3 images (conftest's grouped world), `edit`ed;
    `trained`: both tiny folds of demo trained there first."""
    from conftest import build_grouped_competition

    comp = build_grouped_competition(root / "inputs/digits", root / "inputs/grouped")
    if edit is not None:
        edit(comp)
    if trained:
        run_cli(train.main, ["--fold", "all", "--config", str(DEMO_CONFIG), *TINY, *GROUPED_ROW])


def _multi_image_answer(table: pd.DataFrame) -> pd.Index:
    """The rows of the first answer with more than one image."""
    key = table["patient_id"] + "_" + table["laterality"]
    return table.index[key == key[key.duplicated()].iloc[0]]


def _two_labels_in_an_answer(comp: Path) -> None:
    t = pd.read_csv(comp / "train.csv", dtype=str)
    second = _multi_image_answer(t)[1]
    t.loc[second, "label"] = "9" if t.loc[second, "label"] != "9" else "8"
    t.to_csv(comp / "train.csv", index=False)


def _answer_on_two_sites(comp: Path) -> None:
    t = pd.read_csv(comp / "train.csv", dtype=str)
    t["site"] = t["patient_id"]
    t.loc[_multi_image_answer(t)[1], "site"] = "elsewhere"
    t.to_csv(comp / "train.csv", index=False)


def _review_one_image(root: Path) -> Callable[[Path], None]:
    """Damage: review.csv gives the second image of a multi-image answer another label than its first."""

    def edit(comp: Path) -> None:
        t = pd.read_csv(comp / "train.csv", dtype=str)
        second = _multi_image_answer(t)[1]
        other = "9" if t.loc[second, "label"] != "9" else "8"
        (root / "review.csv").write_text(f"id,reviewed_label\n{t.loc[second, 'id']},{other}\n")

    return edit


def _first_answer_unlisted(comp: Path) -> None:
    t = pd.read_csv(comp / "test.csv", dtype=str)
    first = pd.read_csv(comp / "sample_submission.csv", dtype=str)["prediction_id"][0]
    t[t["patient_id"] + "_" + t["laterality"] != first].to_csv(comp / "test.csv", index=False)


# ---- issue 29: pixel tables, arrays and containers (the damage of its rows)


def _pixel_world(root: Path, keep: int = 64, test_keeps: int | None = None) -> None:
    """Damage: a Digit-Recognizer-style pixel competition in inputs/pixels (conftest's), its tables cut
    to the first `keep` pixel columns (the test table to `test_keeps`)."""
    from conftest import build_pixel_competition

    comp = build_pixel_competition(root / "inputs/pixels")
    for name, n in (("train.csv", keep), ("test.csv", keep if test_keeps is None else test_keeps)):
        if n < 64:
            t = pd.read_csv(comp / name)
            t.drop(columns=[f"pixel{i}" for i in range(n, 64)]).to_csv(comp / name, index=False)


def _store_missing_one(root: Path) -> None:
    """Damage: inputs/digits/train-image.hdf5 holding every training image's PNG bytes but the first's."""
    import h5py
    import numpy as np

    data = root / "inputs/digits"
    ids = pd.read_csv(data / "train.csv", dtype=str)["id"]
    with h5py.File(data / "train-image.hdf5", "w") as f:
        for i in ids[1:]:
            f.create_dataset(i, data=np.void((data / "train" / f"{i}.png").read_bytes()))


# ---- issue 29: one-hot classes, new_whale, graded subset, regression probe and stacking (the damage of its rows)


def _one_hot_train(root: Path, two_in_first: bool = False, none_in_first: bool = False) -> None:
    """Damage: the demo's train.csv as one-hot columns d0..d9 (Plant Pathology 2020's layout), its first
    row holding a second 1 or none."""
    path = root / "inputs/digits/train.csv"
    table = pd.read_csv(path, dtype=str)
    cols = pd.DataFrame({f"d{d}": (table["label"] == str(d)).astype(int) for d in range(10)})
    if two_in_first:
        cols.iloc[0] = 0
        cols.iloc[0, :2] = 1
    if none_in_first:
        cols.iloc[0] = 0
    pd.concat([table[["id"]], cols], axis=1).to_csv(path, index=False)


def _sample_columns(root: Path, cols: list[str]) -> None:
    """Damage: the demo's sample submission as one probability column per name in `cols`."""
    path = root / "inputs/digits/sample_submission.csv"
    ids = pd.read_csv(path, dtype=str)["id"]
    pd.DataFrame({"id": ids, **{c: 0.1 for c in cols}}).to_csv(path, index=False)
