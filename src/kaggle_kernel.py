"""Kaggle notebooks from this repository's experiments, one verb per step (as the kaggle CLI's own):

    python -m src.kaggle_kernel build --config configs/demo.yaml --experiments demo --tta --weights auto
    python -m src.kaggle_kernel rehearse --config configs/demo.yaml --scale 4 --hidden-size 20000
    python -m src.kaggle_kernel train --config configs/demo.yaml --folds 0 1 2 3 4
    python -m src.kaggle_kernel rehearse-train --config configs/demo.yaml --folds 0
    python -m src.kaggle_kernel pull you/demo-train-fold0 you/demo-train-fold1 --config configs/demo.yaml

build: kaggle_kernel/build/, the offline inference bundle: dataset/ (the src package and configs,
each fold's weights without optimizer state, wheels of the packages a stock Kaggle image lacks,
MANIFEST.json, dataset-metadata.json) and notebook/ (the .ipynb and kernel-metadata.json). The
notebook runs src.ensemble on /kaggle/input/<competition>/ (the root is $KAGGLE_ROOT, default
/kaggle) and writes /kaggle/working/submission.csv; with --from-kernels it reads the folds from the
training notebooks' outputs instead of uploading them.
rehearse: runs the built notebook here on a fake /kaggle, checks its submission and extrapolates the time.
train: kaggle_kernel/build/train/: code/ (a dataset: src, configs, the resolved config, the
experiment's folds file, wheels) and fold<k>/ (one notebook per fold, GPU on, internet off, its own
previous output attached to resume an unfinished fold).
rehearse-train: runs those notebooks here on a fake /kaggle with --rehearse-overrides (short epochs).
pull: brings the training notebooks' finished folds into outputs/<experiment>/.

Each verb's --help lists its options; kaggle_kernel/README.md has the upload commands.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path

from src.core.cli import add_blend_args, command_parser, parse_config, run_cli, split_blend_args
from src.core.utils import UserError
from src.kaggle.wheels import IMAGE_FILE  # standard library only (the notebook imports it before installing)

PROG = "python -m src.kaggle_kernel"
BUILD = Path("kaggle_kernel/build")
TRAIN_BUILD = BUILD / "train"
BUILT = ("dataset", "notebook", "train", "rehearsal")  # what a build folder holds: build, train, rehearse write them
TRAIN_FOLD = re.compile(r"fold\d+")  # the training build's one notebook folder a fold, beside code/


def build(args, cfg) -> None:
    from src.ensembling.write_guard import check_replaceable
    from src.kaggle.bundle import build_bundle, bundle_spec

    check_replaceable(args.out, cfg, "--out", lambda name: name in BUILT, str(BUILD))
    spec = bundle_spec(cfg, experiments=args.experiments, views=args.views, voting=args.voting, fmt=args.fmt,
                       competition=args.competition, dataset=args.dataset, kernel=args.kernel, gpu=args.gpu,
                       half=args.half, image=Path(args.image), kernel_sources=args.from_kernels)
    result = build_bundle(cfg, spec, args.weights or cfg.ensemble.weights, Path(args.out), wheels=not args.no_wheels)
    print(f"built {args.out}: dataset {result['dataset_bytes'] / 2**20:.1f} MiB ({spec.dataset}), notebook "
          f"{spec.kernel}; members {spec.members}, views {spec.views}, weights {spec.weights}")
    if spec.dataset.startswith("your-kaggle-username/"):
        print("note: set KAGGLE_USERNAME or pass --dataset/--kernel USER/SLUG before uploading")
    print(f"next: {PROG} rehearse{_same(args, BUILD)}, then the upload commands in kaggle_kernel/README.md")


def rehearse(args, cfg) -> None:
    from src.kaggle.rehearsal import rehearse as run

    out = Path(args.out)
    r = run(cfg, out, args.scale, args.time_limit, args.hidden_size, keep=out / "rehearsal" / "submission.csv",
            kaggle_root=Path(args.kaggle_root) if args.kaggle_root else None)
    print(f"rehearsal: {r['images']} test images in {r['seconds']:.1f} s ({r['setup_s']:.1f} s setup, "
          f"{r['predict_s']:.1f} s predicting); submission checked, copy in {out / 'rehearsal' / 'submission.csv'}")
    print(f"estimate for {r['hidden_size']} hidden test images: {r['estimate_s']:.0f} s "
          f"({r['estimate_s'] / 3600:.2f} h) of the {args.time_limit:g} h limit")
    if r["over_limit"]:
        print(f"WARNING: the estimate exceeds the {args.time_limit:g} h limit; use fewer members, folds or views, "
              "--gpu, or --half")
    print(f"next: kaggle datasets create -p {out / 'dataset'} --dir-mode zip (or datasets version), then kaggle "
          f"kernels push -p {out / 'notebook'} (kaggle_kernel/README.md)")


def train(args, cfg) -> None:
    from src.ensembling.write_guard import check_replaceable
    from src.kaggle.training import build_training, train_spec
    from src.training.lr_finder import resolve_lr

    check_replaceable(args.out, cfg, "--out", lambda name: name == "code" or TRAIN_FOLD.fullmatch(name) is not None,
                      str(TRAIN_BUILD))
    spec = train_spec(cfg, folds=args.folds, competition=args.competition, code=args.dataset,
                      accelerator=args.accelerator, timeout=args.timeout, weights=args.weights_dataset,
                      image=Path(args.image))
    out = Path(args.out)
    dirs = build_training(resolve_lr(cfg), spec, out, wheels=not args.no_wheels)
    print(f"built {out}: code dataset {spec.code} and {len(dirs)} training notebooks "
          f"({', '.join(spec.kernel(k) for k in spec.folds)}), {args.accelerator}, {args.timeout} s a session")
    print(f"next: {PROG} rehearse-train{_same(args, TRAIN_BUILD)} (here, short epochs); then kaggle datasets "
          f"create -p {out / 'code'} --dir-mode zip, and for each fold kaggle kernels push -p {out}/fold<k> "
          f"--accelerator {args.accelerator} -t {args.timeout} (kaggle_kernel/README.md)")


def rehearse_train(args, cfg) -> None:
    from src.ensembling.write_guard import check_writable
    from src.kaggle.training import rehearse_training

    if args.kaggle_root:  # the rehearsal writes input/ and working/ there
        for name in ("input", "working"):
            check_writable(Path(args.kaggle_root) / name / "x", cfg, "--kaggle-root", "rehearsal",
                           safe="a new folder such as /tmp/kaggle", given=args.kaggle_root)
    root = Path(args.kaggle_root) if args.kaggle_root else Path(tempfile.mkdtemp(prefix="kaggle-train-"))
    for r in rehearse_training(cfg, Path(args.out), root, args.folds, args.rehearse_overrides, args.pace):
        print(f"rehearsal: fold {r['fold']}'s notebook ran in {r['seconds']:.1f} s ({args.rehearse_overrides}); "
              f"its output is {r['output']}")
        if r["estimate"]:
            print("  " + r["estimate"])
    print(f"next: push the notebooks (kaggle_kernel/README.md); a --from-kernels bundle rehearses on these outputs "
          f"with {PROG} rehearse --kaggle-root {root}")


def pull(args, cfg) -> None:
    from src.kaggle.download import kernel_output

    if args.pulled and len(args.kernels) > 1:
        raise UserError("--pulled names one downloaded output; pull one kernel at a time with it")
    for kernel in args.kernels:
        with kernel_output(kernel, Path(args.pulled) if args.pulled else None) as output:
            from src.kaggle.training import pull as pull_kernel  # torch and timm: only once there is an output

            got = pull_kernel(cfg, kernel, output, args.force)
        print(f"pulled folds {got} of {cfg.experiment.name} from {kernel} into {cfg.out_dir}")
    print(f"next: src.ensemble blends them as local folds; {PROG} build{_same(args)} --experiments "
          f"{cfg.experiment.name} --from-kernels {' '.join(args.kernels)} builds a bundle that uploads no weights")


def _same(args, default_out: Path | None = None) -> str:
    """` --config C` (and ` --out O` where not the default) for a next: line."""
    words = (["--config", args.config] if args.config else []) + (
        ["--out", args.out] if default_out is not None and Path(args.out) != default_out else [])
    return "".join(" " + shlex.quote(w) for w in words)


# ---------------------------------------------------------------- the verbs and their options


def _build_options(p: argparse.ArgumentParser) -> None:
    add_blend_args(p)
    p.add_argument("--competition", default=None, help="competition slug (default: data.dir's folder name)")
    p.add_argument("--dataset", default=None, help="USER/SLUG of the bundle dataset")
    p.add_argument("--kernel", default=None, help="USER/SLUG of the notebook")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True, help="enable_gpu in the kernel")
    p.add_argument("--half", action="store_true", help="store the weights as fp16 (half the upload)")
    _image_and_wheels(p, "bundle")
    p.add_argument("--out", default=str(BUILD), help="build folder")
    p.add_argument("--from-kernels", nargs="+", default=None, metavar="USER/KERNEL",
                   help="the notebook reads each fold from these training notebooks' outputs (kernel_sources) "
                        "instead of uploading the weights (the folds must be pulled here)")


def _rehearse_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(BUILD), help="the build folder")
    p.add_argument("--scale", type=int, default=1, help="each test image this many times")
    p.add_argument("--time-limit", type=float, default=9.0, help="the competition's limit in hours")
    p.add_argument("--hidden-size", type=int, default=None, help="images in the hidden test set")
    p.add_argument("--kaggle-root", default=None, help="a --from-kernels bundle: the fake /kaggle where "
                                                      "rehearse-train left the training notebooks' outputs")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", nargs="+", default=None, help="the folds, a notebook each (default: all)")
    p.add_argument("--accelerator", default="NvidiaTeslaT4",
                   help="the accelerator the push asks for (kaggle kernels push --accelerator)")
    p.add_argument("--timeout", type=int, default=12 * 3600,
                   help="seconds of a Kaggle session; the notebook stops between epochs before it")
    p.add_argument("--weights-dataset", default=None, help="USER/SLUG of the dataset holding model.pretrained_path's file")
    p.add_argument("--dataset", default=None, help="USER/SLUG of the code dataset")
    p.add_argument("--competition", default=None, help="competition slug (default: data.dir's folder name)")
    _image_and_wheels(p, "code dataset")
    p.add_argument("--out", default=str(TRAIN_BUILD), help="build folder")


def _rehearse_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folds", nargs="+", default=None, help="the folds (default: every one built)")
    p.add_argument("--rehearse-overrides", default="train.epochs=1 train.limit_batches=2",
                   help="overrides that keep the rehearsal short")
    p.add_argument("--pace", type=float, default=None,
                   help="training images a second on the Kaggle accelerator (src.bench there), for the time "
                        "estimate; default: the rehearsal's own pace on this machine")
    p.add_argument("--kaggle-root", default=None, help="the fake /kaggle to use and keep (default: a temporary folder)")
    p.add_argument("--out", default=str(TRAIN_BUILD), help="the training notebooks' build folder")


def _pull_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("kernels", nargs="+", metavar="USER/KERNEL", help="the training notebooks")
    p.add_argument("--pulled", default=None, help="the output, downloaded already (kaggle kernels output USER/KERNEL "
                                                  "-p DIR), instead of downloading it")
    p.add_argument("--force", action="store_true", help="replace a local finished fold of another run")


def _image_and_wheels(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--no-wheels", action="store_true", help=f"{what}: no wheels (the Kaggle image has them)")
    p.add_argument("--image", default=str(IMAGE_FILE),
                   help="the Kaggle image's packages (name==version lines, '# python: X.Y'); what it lacks is "
                        "bundled as wheels and hidden in the rehearsal (default: today's image, "
                        "src/kaggle/kaggle_image.txt)")


def _prepare_folds(args: argparse.Namespace) -> None:
    """--folds 0 1: fold numbers."""
    bad = [f for f in args.folds or [] if not f.lstrip("-").isdigit()]
    if bad:
        raise UserError(f"--folds takes fold numbers, and {bad[:3]} are not; e.g. --folds 0 1 2")
    args.folds = None if args.folds is None else [int(f) for f in args.folds]


# verb: (what it does, its options, the prepare step before the config loads, the function)
VERBS = {
    "build": ("build the offline inference bundle (dataset and notebook)", _build_options, split_blend_args, build),
    "rehearse": ("run the built inference notebook here on a fake /kaggle", _rehearse_options, None, rehearse),
    "train": ("build one training notebook per fold, and their code dataset", _train_options, _prepare_folds, train),
    "rehearse-train": ("run the built training notebooks here on a fake /kaggle, short epochs",
                       _rehearse_train_options, _prepare_folds, rehearse_train),
    "pull": ("bring training notebooks' finished folds into outputs/<experiment>/", _pull_options, None, pull),
}
# The flags that chose the purpose before the verbs (old_spelling names the verb each meant).
OLD_FLAGS = ("--pull", "--train", "--rehearse")


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser (its --help lists the verbs) and each verb's own."""
    top = command_parser(__doc__)
    top.prog = PROG
    sub = top.add_subparsers(dest="verb", metavar="{" + ",".join(VERBS) + "}")
    verbs = {}
    for name, (summary, options, _, _) in VERBS.items():
        verbs[name] = sub.add_parser(name, help=summary, description=f"{PROG} {name}: {summary}.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        options(verbs[name])
    return top, verbs


def old_spelling(argv: list[str], verbs: dict[str, argparse.ArgumentParser]) -> str:
    """The one sentence for a command line without a verb first: the verb it meant, with its words
    (less the options that verb does not take)."""
    if not argv:
        return (f"{PROG} now takes a verb first ({', '.join(VERBS)}): use e.g. `{PROG} build --config "
                "configs/<name>.yaml --experiments <exp>`")
    misplaced = next((w for w in argv if w in VERBS), None)
    flags = set(argv) & set(OLD_FLAGS)
    verb = misplaced or ("pull" if "--pull" in flags else "rehearse-train" if {"--train", "--rehearse"} <= flags else
                         "train" if "--train" in flags else "rehearse" if "--rehearse" in flags else "build")
    known = {s for a in verbs[verb]._actions for s in a.option_strings} | {"--config"}  # argparse lists them nowhere public
    kernels, rest, dropped, after_pull, dropping = [], [], [], False, False
    for i, w in enumerate(argv):
        if w in OLD_FLAGS or (w == misplaced and i == argv.index(w)):
            after_pull = w == "--pull"
            continue
        if after_pull and not w.startswith("-") and "=" not in w:
            kernels.append(w)  # --pull's kernels are pull's positionals
            continue
        after_pull = False
        if w.startswith("-") or "=" in w:  # an option, or a section.key=value override
            dropping = w.startswith("-") and w.split("=")[0] not in known
            dropped += [w] if dropping else []
        (rest if not dropping else []).append(w)
    without = f" (without {', '.join(dropped)}, which {verb} does not take)" if dropped else ""
    return f"{PROG} now takes a verb first ({', '.join(VERBS)}): use `{PROG} {shlex.join([verb, *kernels, *rest])}`{without}"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    top, verbs = parser()
    if not argv or argv[0] not in VERBS:
        if argv and argv[0] in ("-h", "--help"):
            top.parse_args(argv)  # prints the help and exits
        raise UserError(old_spelling(argv, verbs))
    _, _, prepare, run = VERBS[argv[0]]
    args, cfg = parse_config(verbs[argv[0]], argv[1:], prepare=prepare)
    run(args, cfg)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: a build replaces its folder only when complete, and a rehearsal's "
                              "temporary folder is removed; run the same command again")
