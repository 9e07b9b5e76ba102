"""Look at a trained experiment, or compare several.

    python -m src.report --config configs/demo.yaml                      # the config's experiment
    python -m src.report --config configs/demo.yaml --experiment demo --wrong 36 --cams 12
    python -m src.report --config configs/demo.yaml --compare demo_sgd demo_adam demo_rmsprop

--experiment writes outputs/<exp>/report.html (self-contained: CV table with every metric per fold
and out of fold, learning curves, OOF confusion matrix and per-class scores, the most confidently
wrong images, Grad-CAM maps by the fold model that never saw the image, first-layer filters and
early feature maps, the resolved config and the git commit), the figures under
outputs/<exp>/report/, and outputs/<exp>/suspect_labels.csv (every OOF image by loss; fill its
reviewed_label column and pass it to python -m src.folds --relabel).

--compare writes outputs/compare/<A>+<B>+.../compare.html: validation curves overlaid (mean over
folds, +-1 std band) and one CV row per experiment with the settings that differ.
"""

from __future__ import annotations

from src.core.cli import command_parser, parse_config, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--experiment", default=None, help="experiment under outputs/ (default: the config's)")
    what.add_argument("--compare", nargs="+", metavar="EXP", default=None, help="two or more experiments to compare")
    parser.add_argument("--wrong", type=int, default=24, help="most confidently wrong OOF images shown (default 24)")
    parser.add_argument("--cams", type=int, default=8, help="Grad-CAM maps of right and of wrong predictions (default 8 each)")
    parser.add_argument("--cam-layer", default=None, help="module to explain (default: the deepest stage at least 4x4)")
    parser.add_argument("--out", default=None, help="--compare: output folder (default outputs/compare/<A>+<B>...)")
    args, cfg = parse_config(parser, argv)
    if args.compare:
        from src.analysis.comparison import build_comparison  # after parsing: --help imports nothing heavy

        build_comparison(cfg, args.compare, args.out)
    else:
        from src.analysis.report import build_report

        build_report(cfg, args.experiment, n_wrong=args.wrong, n_cam=args.cams, cam_layer=args.cam_layer)


if __name__ == "__main__":
    run_cli(main)
