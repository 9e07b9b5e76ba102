"""The trained ensemble as an offline Kaggle code-competition notebook.

    python -m src.kaggle_kernel --config configs/demo.yaml --experiments demo --tta --weights auto
    python -m src.kaggle_kernel --config configs/demo.yaml --rehearse --scale 4 --hidden-size 20000
    python -m src.kaggle_kernel --config configs/demo.yaml --train --folds 0 1 2 3 4   # training notebooks
    python -m src.kaggle_kernel --config configs/demo.yaml --train --folds 0 1 --rehearse
    python -m src.kaggle_kernel --config configs/demo.yaml --pull you/demo-train-fold0 you/demo-train-fold1

Builds kaggle_kernel/build/: dataset/ (the src package and configs, each fold's weights without
optimizer state, wheels of the packages a stock Kaggle image lacks, MANIFEST.json,
dataset-metadata.json) and notebook/ (the .ipynb and kernel-metadata.json). The notebook runs
src.ensemble on /kaggle/input/<competition>/ (the root is $KAGGLE_ROOT, default /kaggle) and writes
/kaggle/working/submission.csv. --rehearse runs the built notebook here on a fake /kaggle, checks
its submission and extrapolates the time. kaggle_kernel/README.md has the upload commands.

--train builds kaggle_kernel/build/train/ instead: code/ (a dataset: src, configs, the resolved
config, the experiment's folds file, wheels) and fold<k>/ (one notebook per fold, GPU on, internet
off, its own previous output attached to resume an unfinished fold); --train --rehearse runs
those notebooks here on a fake /kaggle with --rehearse-overrides (short epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from src.core.cli import add_blend_args, command_parser, parse_config, run_cli, split_blend_args
from src.core.config import Config
from src.core.utils import UserError
from src.kaggle.wheels import IMAGE_FILE  # standard library only (the notebook imports it before installing)

if TYPE_CHECKING:
    from src.kaggle.bundle import BundleSpec

BUILD = Path("kaggle_kernel/build")


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")[:50]


# What the kaggle CLI accepts (it checks before any upload): a dataset slug and title of 6 to 50
# characters, a kernel slug and title of at least 5 (and Kaggle's 50 at most).
DATASET_SLUG, KERNEL_SLUG = (6, 50), (5, 50)


def _derived(name: str, suffix: str) -> str:
    """<name>-<suffix>, the name cut so the whole fits 50 characters (a short name still gives 6+)."""
    return f"{(name or 'ensemble')[:50 - len(suffix) - 1].strip('-')}-{suffix}"


def _check_slug(what: str, value: str, bounds: tuple[int, int]) -> None:
    if value.count("/") != 1 or not all(value.split("/")):
        raise UserError(f"{what} {value} is not USER/SLUG; give your Kaggle user name and a slug")
    slug = value.split("/")[1]
    if not bounds[0] <= len(slug) <= bounds[1] or slug != _slug(slug):
        raise UserError(f"{what} {value}: the slug must be {bounds[0]} to {bounds[1]} lowercase letters, digits and "
                        f"hyphens (it has {len(slug)} characters); give another, e.g. {value.split('/')[0]}/"
                        f"{_derived(_slug(slug), 'bundle' if what == '--dataset' else 'inference')}")


def make_spec(cfg: Config, args) -> BundleSpec:
    members = args.experiments or [str(cfg.experiment.name)]
    user = os.environ.get("KAGGLE_USERNAME", "your-kaggle-username")
    name = _slug("-".join(members))
    from src.core.views import split_auto  # here, not at the top: --help imports nothing heavy
    from src.kaggle.bundle import BundleSpec

    views = args.views or cfg.ensemble.tta  # [auto, ...]: chosen on OOF when the bundle is built
    split_auto(views)  # a wrong view name stops here
    return BundleSpec(
        members=members, views=views, weights=[], voting=args.voting or cfg.ensemble.voting,
        fmt=args.fmt or cfg.ensemble.format, competition=args.competition or _slug(Path(cfg.data.dir).resolve().name),
        dataset=args.dataset or f"{user}/{_derived(name, 'bundle')}",
        kernel=args.kernel or f"{user}/{_derived(name, 'inference')}",
        gpu=args.gpu, half=args.half, image=Path(args.image), kernel_sources=args.from_kernels,
    )


def build(cfg: Config, args) -> None:
    if not Path(args.image).is_file():
        raise UserError(f"--image {args.image} does not exist; give a list of the Kaggle image's packages "
                        "(name==version lines), or leave --image out for today's image")
    spec = make_spec(cfg, args)
    _check_slug("--dataset", spec.dataset, DATASET_SLUG)
    _check_slug("--kernel", spec.kernel, KERNEL_SLUG)
    from src.kaggle.bundle import build_bundle

    result = build_bundle(cfg, spec, args.weights or cfg.ensemble.weights, Path(args.out), wheels=not args.no_wheels)
    print(f"built {args.out}: dataset {result['dataset_bytes'] / 2**20:.1f} MiB ({spec.dataset}), notebook "
          f"{spec.kernel}; members {spec.members}, views {spec.views}, weights {spec.weights}")
    if spec.dataset.startswith("your-kaggle-username/"):
        print("note: set KAGGLE_USERNAME or pass --dataset/--kernel USER/SLUG before uploading")
    print("next: python -m src.kaggle_kernel --rehearse, then the upload commands in kaggle_kernel/README.md")


def rehearsal(cfg: Config, args) -> None:
    out = Path(args.out)
    if not (out / "dataset" / "MANIFEST.json").is_file():
        raise UserError(f"{out} holds no built bundle; build it first (python -m src.kaggle_kernel --experiments ...)")
    from src.kaggle.rehearsal import rehearse

    r = rehearse(cfg, out, args.scale, args.time_limit, args.hidden_size, keep=out / "rehearsal" / "submission.csv",
                 kaggle_root=Path(args.kaggle_root) if args.kaggle_root else None)
    print(f"rehearsal: {r['images']} test images in {r['seconds']:.1f} s ({r['setup_s']:.1f} s setup, "
          f"{r['predict_s']:.1f} s predicting); submission checked, copy in {out / 'rehearsal' / 'submission.csv'}")
    hours = r["estimate_s"] / 3600
    print(f"estimate for {r['hidden_size']} hidden test images: {r['estimate_s']:.0f} s ({hours:.2f} h) of the "
          f"{args.time_limit:g} h limit")
    if r["over_limit"]:
        print(f"WARNING: the estimate exceeds the {args.time_limit:g} h limit; use fewer members, folds or views, "
              "--gpu, or --half")


def train_notebooks(cfg: Config, args) -> None:
    """--train: build the training notebooks, or rehearse them (--rehearse)."""
    from src.kaggle.training import TrainSpec, build_training, estimate_fold, rehearse_training
    from src.training.lr_finder import resolve_lr

    user = os.environ.get("KAGGLE_USERNAME", "your-kaggle-username")
    name = str(cfg.experiment.name)
    folds = args.folds if args.folds is not None else list(range(cfg.data.n_folds))
    out = Path(args.out) / "train" if args.out == str(BUILD) else Path(args.out)
    if args.rehearse:
        if not (out / "code" / "config.yaml").is_file():
            raise UserError(f"{out} holds no built training notebooks; build them first (--train without --rehearse)")
        root = Path(args.kaggle_root) if args.kaggle_root else Path(tempfile.mkdtemp(prefix="kaggle-train-"))
        seconds = rehearse_training(cfg, out, root, folds, args.rehearse_overrides)
        built = json.loads((out / "code" / "TRAIN.json").read_text())
        for k, s in seconds.items():
            slug = built["kernels"][str(k)].split("/", 1)[1]
            fold_out = root / "input" / slug / "outputs" / name / f"fold{k}"
            print(f"rehearsal: fold {k}'s notebook ran in {s:.1f} s ({args.rehearse_overrides}); its output is {fold_out}")
            if (fold_out / "history.csv").is_file():
                print("  " + estimate_fold(cfg, k, fold_out, built["timeout"], args.pace))
        return
    spec = TrainSpec(experiment=name, folds=folds, user=user,
                     competition=args.competition or _slug(Path(cfg.data.dir).resolve().name),
                     code=args.dataset or f"{user}/{_derived(_slug(name), 'code')}", accelerator=args.accelerator,
                     timeout=args.timeout, weights=args.weights_dataset, image=Path(args.image))
    _check_slug("--dataset", spec.code, DATASET_SLUG)
    for k in folds:
        _check_slug("--kernel", spec.kernel(k), KERNEL_SLUG)
    dirs = build_training(resolve_lr(cfg), spec, out, wheels=not args.no_wheels)
    print(f"built {out}: code dataset {spec.code} and {len(dirs)} training notebooks "
          f"({', '.join(spec.kernel(k) for k in folds)}), {args.accelerator}, {args.timeout} s a session")
    print(f"next: kaggle datasets create -p {out / 'code'} --dir-mode zip, then for each fold kaggle kernels push -p "
          f"{out}/fold<k> --accelerator {args.accelerator} -t {args.timeout} (kaggle_kernel/README.md)")


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    add_blend_args(parser)
    parser.add_argument("--competition", default=None, help="competition slug (default: data.dir's folder name)")
    parser.add_argument("--dataset", default=None, help="USER/SLUG of the bundle dataset")
    parser.add_argument("--kernel", default=None, help="USER/SLUG of the notebook")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True, help="enable_gpu in the kernel")
    parser.add_argument("--half", action="store_true", help="store the weights as fp16 (half the upload)")
    parser.add_argument("--no-wheels", action="store_true", help="bundle no wheels (the Kaggle image has them)")
    parser.add_argument("--image", default=str(IMAGE_FILE),
                        help="the Kaggle image's packages (name==version lines, '# python: X.Y'); what it lacks is "
                             "bundled as wheels and hidden in the rehearsal (default: today's image, src/kaggle/"
                             "kaggle_image.txt)")
    parser.add_argument("--out", default=str(BUILD), help="build folder")
    parser.add_argument("--rehearse", action="store_true", help="run the built notebook here on a fake /kaggle")
    parser.add_argument("--scale", type=int, default=1, help="rehearsal: each test image this many times")
    parser.add_argument("--time-limit", type=float, default=9.0, help="rehearsal: the competition's limit in hours")
    parser.add_argument("--hidden-size", type=int, default=None, help="rehearsal: images in the hidden test set")
    parser.add_argument("--train", action="store_true", help="build (or with --rehearse, rehearse) one training "
                        "notebook per fold instead of the inference notebook")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="--train: the folds (default: all)")
    parser.add_argument("--accelerator", default="NvidiaTeslaT4",
                        help="--train: the accelerator the push asks for (kaggle kernels push --accelerator)")
    parser.add_argument("--timeout", type=int, default=12 * 3600,
                        help="--train: seconds of a Kaggle session; the notebook stops between epochs before it")
    parser.add_argument("--weights-dataset", default=None,
                        help="--train: USER/SLUG of the dataset holding model.pretrained_path's file")
    parser.add_argument("--rehearse-overrides", default="train.epochs=1 train.limit_batches=2",
                        help="--train --rehearse: overrides that keep the rehearsal short")
    parser.add_argument("--pace", type=float, default=None,
                        help="--train --rehearse: training images a second on the Kaggle accelerator (src.bench there), "
                             "for the time estimate; default: the rehearsal's own pace on this machine")
    parser.add_argument("--kaggle-root", default=None,
                        help="--train --rehearse: the fake /kaggle to use and keep (default: a temporary folder); "
                             "--rehearse of a --from-kernels bundle: where the training rehearsal left the outputs")
    parser.add_argument("--from-kernels", nargs="+", default=None, metavar="USER/KERNEL",
                        help="the inference notebook reads each fold from these training notebooks' outputs "
                             "(kernel_sources) instead of uploading the weights (the folds must be pulled here)")
    parser.add_argument("--pull", nargs="+", default=None, metavar="USER/KERNEL",
                        help="bring training notebooks' finished folds into outputs/<experiment>/ (checked against "
                             "this config and split)")
    parser.add_argument("--pulled", default=None, help="--pull: the output, downloaded already (kaggle kernels output "
                                                      "USER/KERNEL -p DIR), instead of downloading it")
    parser.add_argument("--force", action="store_true", help="--pull: replace a local finished fold of another run")
    args, cfg = parse_config(parser, argv, prepare=split_blend_args)
    if args.pull:
        from src.kaggle.training import pull

        if args.pulled and len(args.pull) > 1:
            raise UserError("--pulled names one downloaded output; pull one kernel at a time with it")
        for kernel in args.pull:
            got = pull(cfg, kernel, Path(args.pulled) if args.pulled else None, args.force)
            print(f"pulled folds {got} of {cfg.experiment.name} from {kernel} into {cfg.out_dir}")
        return
    if args.scale < 1:
        raise UserError(f"--scale {args.scale} must be at least 1")
    if args.train:
        return train_notebooks(cfg, args)
    rehearsal(cfg, args) if args.rehearse else build(cfg, args)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: a build replaces kaggle_kernel/build only when complete, and the rehearsal's "
                              "temporary folder is removed; run the same command again")
