"""Pseudo-labels from the blended test predictions of finished experiments.

    python -m src.pseudo --config configs/demo.yaml --experiments demo               # hard, confidence >= 0.9
    python -m src.pseudo --experiments a b --threshold 0.95 --round 2 --tta identity zoom1.05
    python -m src.pseudo --experiments a b --soft                                    # probabilities as targets
    python -m src.train --config configs/demo.yaml --fold all experiment.name=demo_pl \\
        data.pseudo=outputs/pseudo/demo_r1_<sha8>.csv             # the exact value is printed

Writes outputs/pseudo/<members>_r<round>_<sha8>.csv (id, label, confidence, round, prob_<class>;
sha8 from its content's sha1, checked when training reads it) and a .json beside it. Training with data.pseudo adds those test images to the training part of every
fold, never to validation, so the OOF score stays a score on real labels.
"""

from __future__ import annotations

from src.core.cli import add_blend_args, command_parser, parse_config, run_cli, split_blend_args


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    add_blend_args(parser, fmt=False)
    parser.add_argument("--threshold", type=float, default=None,
                        help="keep test images whose top blended probability reaches this (default 0.9; 0 with --soft)")
    parser.add_argument("--soft", action="store_true", help="train on the blended probabilities, not the argmax label")
    parser.add_argument("--round", dest="round_", type=int, default=1, help="pseudo-labelling round (default 1)")
    parser.add_argument("--out", default=None,
                        help="table path: X.csv writes X_<sha8>.csv, sha8 naming the table and its .json (default: "
                             "outputs/pseudo/<members>_r<round>_<sha8>.csv)")
    args, cfg = parse_config(parser, argv, prepare=split_blend_args)
    from src.ensembling.pseudo_labels import make_pseudo  # after parsing: --help imports nothing heavy

    names = args.experiments or [str(cfg.experiment.name)]
    make_pseudo(cfg, names, args.views, args.weights, args.voting, args.threshold, args.soft, args.round_, args.out)


if __name__ == "__main__":
    run_cli(main)
