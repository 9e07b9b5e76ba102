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

import argparse

from src.core.config import add_config_args, load_config
from src.core.utils import run_cli
from src.evaluation.blending import add_blend_args, split_blend_args
from src.training.pseudo_labels import make_pseudo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_blend_args(parser, fmt=False)
    parser.add_argument("--threshold", type=float, default=None,
                        help="keep test images whose top blended probability reaches this (default 0.9; 0 with --soft)")
    parser.add_argument("--soft", action="store_true", help="train on the blended probabilities, not the argmax label")
    parser.add_argument("--round", dest="round_", type=int, default=1, help="pseudo-labelling round (default 1)")
    parser.add_argument("--out", default=None, help="table path (default: outputs/pseudo/<members>_r<round>.csv)")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    views = split_blend_args(args)
    cfg = load_config(args.config, args.overrides)
    names = args.experiments or [str(cfg.experiment.name)]
    make_pseudo(cfg, names, views, args.weights, args.voting, args.threshold, args.soft, args.round_, args.out)


if __name__ == "__main__":
    run_cli(main)
