"""Averaged models of a trained experiment, written as a new experiment the ensemble can blend.

    python -m src.average --config configs/demo.yaml --experiment demo --top 3   # -> outputs/demo_top3/
    python -m src.average --config configs/demo.yaml --experiment demo --swa     # -> outputs/demo_swa/
    python -m src.ensemble --config configs/demo.yaml --experiments demo demo_top3

--top K averages each fold's K best checkpoints (kept in fold<k>/top/ when trained with
train.keep_top >= K), recomputes BatchNorm statistics and validates the average on the fold's
own images; --swa packs the SWA models trained with train.swa. The averaged OOF score is printed
beside the original's and written to outputs/<new>/cv.json.
"""

from __future__ import annotations

from src.core.cli import command_parser, parse_config, run_cli
from src.core.utils import UserError


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--experiment", required=True, help="the trained experiment (outputs/<name>/)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--top", type=int, default=None, help="average each fold's K best kept checkpoints")
    how.add_argument("--swa", action="store_true", help="take each fold's SWA model (train.swa)")
    args, cfg = parse_config(parser, argv)
    if args.top is not None and args.top < 1:
        raise UserError(f"--top {args.top} averages no checkpoint; give the number of best checkpoints to average "
                        "per fold (2 or more; train with train.keep_top at least that)")
    from src.training.averaged_experiment import average_experiment  # after parsing: --help imports nothing heavy

    average_experiment(cfg, args.experiment, args.top, args.swa)


if __name__ == "__main__":
    run_cli(main)
