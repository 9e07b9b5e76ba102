"""Soft-voting ensemble of fold models and experiments, with test-time augmentation.

    python -m src.ensemble --config configs/demo.yaml            # views of ensemble.tta
    python -m src.ensemble --experiments exp_a exp_b --tta hflip vflip --weights auto
    python -m src.ensemble --tta d4 --voting geometric --out submissions/final.csv
    python -m src.ensemble --no-tta                               # identity view only
    python -m src.ensemble --tta auto                             # views of ensemble.tta that help on OOF
    python -m src.ensemble --experiments a b --voting rank        # rank average (AUC-type metrics)
    python -m src.ensemble --experiments a b --stack logreg       # logistic regression on OOF, nested folds
    torchrun --standalone --nproc_per_node 4 -m src.ensemble      # the images shared out over 4 GPUs

Each member is an experiment under outputs/<name>/ whose finished folds (done.json) are blended;
each fold's stored config rebuilds its model and transforms. First every member's test and
TTA-OOF logits per fold and view are written to outputs/<name>/preds/ (or read from there: a
re-blend with other weights, voting or format builds no model), then they are blended. Before
writing, the OOF score of every member and of the blend is printed without and with TTA.
Writes submissions/<name>.csv, <name>_probs.csv and <name>.blend.json (the blend fitted on OOF: members,
fold sha1s, views, weights, voting, thresholds, OOF score), and adds a row to ledger.csv beside them
(python -m src.ledger).
"""

from __future__ import annotations

from src.core.cli import add_blend_args, command_parser, parse_config, run_cli, split_blend_args
from src.core.config import STACKERS


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    add_blend_args(parser)
    parser.add_argument("--out", default=None, help="submission path (default: submissions/<members>[_tta].csv)")
    parser.add_argument("--stack", choices=list(STACKERS), default=None,
                        help="fit a stacker on the members' OOF predictions (nested folds) instead of voting")
    args, cfg = parse_config(parser, argv, prepare=split_blend_args)
    from src.core import distributed  # after parsing: --help imports nothing heavy
    from src.ensembling.pipeline import run

    with distributed.launched(cfg.runtime.device):  # torchrun: each process predicts its share of the images
        run(cfg, args.experiments, args.views, args.weights, args.voting, args.out, args.fmt, stack=args.stack)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: predictions already made are kept in outputs/<member>/preds/ and read by the next run")
