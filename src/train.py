"""Stratified K-fold training of a (partially frozen) timm model.

    python -m src.train --fold 0                       # the ResNeXt101 recipe, fold 0
    python -m src.train --config configs/demo.yaml --fold all
    python -m src.train --fold -1 train.epochs=8       # all training data, no validation
    python -m src.train --fold 0 --resume              # continue an interrupted fold
    python -m src.train --fold 0 --dry-run             # build everything, one forward pass
    python -m src.train --lr-find                      # the learning-rate range test: a suggestion and a plot
    torchrun --nproc_per_node 4 -m src.train --fold all  # DistributedDataParallel over 4 GPUs

Writes outputs/<experiment>/fold<k>/: best.pt, last.pt, oof.csv, history.csv, curves.png,
confusion_matrix.png, done.json; after --fold all also outputs/<experiment>/cv.json. --lr-find
(and optim.lr: find) writes outputs/<experiment>/lr_find.png, .csv and .json.
Under torchrun every process trains on its share of each batch (src/core/distributed.py); rank 0
alone writes, prints and tracks.
"""

from __future__ import annotations

import argparse
import time

from src.core.cli import command_parser, parse_config, run_cli
from src.core.config import Config


def parse_fold(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes a fold index, all or -1, not '{text}'") from None


def _one(cfg: Config, fold: int, resume: bool, force: bool, dry_run: bool, allow_mixed: bool) -> dict:
    from src.core import distributed  # here, not at the top: --help imports nothing heavy
    from src.core.tracking import Tracker
    from src.runs.layout import fold_paths
    from src.training.trainer import train_fold

    if dry_run or (fold_paths(cfg.out_dir, fold).done.is_file() and not force):
        return train_fold(cfg, fold, dry_run_only=dry_run)  # nothing to track
    name = f"{cfg.experiment.name}-fold{fold}"
    with Tracker.start(cfg, name=name, out_dir=cfg.out_dir) if distributed.is_main() else Tracker.off() as tracker:
        return train_fold(cfg, fold, resume=resume, force=force, tracker=tracker, allow_mixed=allow_mixed)


def run(cfg: Config, fold: int | str, *, resume: bool = False, force: bool = False, dry_run: bool = False,
        allow_mixed: bool = False) -> dict:
    """Train one fold, -1 (all data) or 'all' folds (then write the CV report); one W&B run per fold."""
    from src.core import distributed
    from src.runs.layout import finished_folds
    from src.training.lr_finder import resolve_lr
    from src.training.trainer import cv_report

    if not dry_run:
        cfg = resolve_lr(cfg)  # optim.lr=find: one sweep before the first fold, one rate for every fold
    if fold != "all":
        result = _one(cfg, int(fold), resume, force, dry_run, allow_mixed)
        if int(fold) >= 0 and not dry_run and (cfg.out_dir / "cv.json").is_file():  # never left describing older folds
            folds = finished_folds(cfg.out_dir)
            distributed.from_main(lambda: cv_report(cfg, folds))
            print(f"CV report over the finished folds {folds} rewritten in {cfg.out_dir / 'cv.json'}")
        return result
    t0 = time.time()
    earlier = [] if force or dry_run else finished_folds(cfg.out_dir)  # skipped below: counted apart
    # --fold all --force retrains every fold with these settings: the old ones are not kept alongside.
    results = [_one(cfg, k, resume, force, dry_run, allow_mixed or force) for k in range(cfg.data.n_folds)]
    if dry_run:
        return {"folds": results}
    report = distributed.from_main(lambda: cv_report(cfg, list(range(cfg.data.n_folds))))
    trained = cfg.data.n_folds - len(earlier)
    print(f"{trained} fold{'s' * (trained != 1)} trained in {time.time() - t0:.0f} s"
          + (f" ({len(earlier)} finished earlier: {earlier})" if earlier else "")
          + f"; CV report in {cfg.out_dir / 'cv.json'}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--fold", type=parse_fold, help="fold index, all, or -1 (all data)")
    parser.add_argument("--lr-find", action="store_true",
                        help="run the learning-rate range test on fold 0's training part, print a suggested optim.lr "
                             "and plot the loss against the rate (outputs/<experiment>/lr_find.png); trains nothing")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt")
    parser.add_argument("--force", action="store_true", help="retrain folds that already finished")
    parser.add_argument("--dry-run", action="store_true", help="build everything, one forward pass, train nothing")
    parser.add_argument("--allow-mixed-configs", action="store_true",
                        help="train a fold with other settings than the experiment's finished folds")
    args, cfg = parse_config(parser, argv)
    if (args.fold is None) == (not args.lr_find):
        parser.error("give --fold (to train) or --lr-find (to find a learning rate), one of them")
    from src.core import distributed  # after parsing: --help imports nothing heavy

    if args.lr_find:
        from src.training.lr_finder import find_lr

        with distributed.launched(cfg.runtime.device):
            if distributed.world_size() > 1:
                parser.error("--lr-find sweeps in one process: run it without torchrun")
            find_lr(cfg)
        return

    with distributed.launched(cfg.runtime.device):  # torchrun: one process group for the whole command
        run(cfg, args.fold, resume=args.resume, force=args.force, dry_run=args.dry_run,
            allow_mixed=args.allow_mixed_configs)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: finished epochs are kept in last.pt; continue with --resume")
