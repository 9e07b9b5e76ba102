"""The frozen-feature baseline: a scikit-learn classifier on a frozen backbone's pooled features.

    python -m src.probe --config configs/demo.yaml                          # logistic regression
    python -m src.probe --config configs/demo.yaml --classifier svm --out submissions/demo_probe_svm.csv
    python -m src.probe --config configs/resnext101.yaml --classifier rf
    python -m src.probe --config configs/demo_regression.yaml               # ridge on a value per image
    python -m src.probe --config configs/demo.yaml --meta data.meta_cols=auto   # metadata alone (train.csv and test.csv)

The config's model with its configured weights (model.pretrained / model.pretrained_path) runs
once over every training image (and test image, with --out); the pooled features are cached under
outputs/<experiment>/probe/. The classifier (logreg | rf | svm; ridge for data.task=regression) is
fitted on the experiment's own folds; its OOF score is printed beside the fine-tuned experiment's (outputs/<experiment>/cv.json)
and written with the OOF probabilities to outputs/<experiment>/probe/. --out writes a submission
(the mean of the fold classifiers) in sample_submission.csv's format. --meta fits gradient boosting
on the data.meta_cols columns alone instead (outputs/<experiment>/probe/meta.json), printed beside
the image probe's and the fine-tuned scores.
"""

from __future__ import annotations

from src.core.cli import command_parser, parse_config, run_cli
from src.core.config import PROBE_CLASSIFIERS
from src.core.utils import UserError


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--classifier", choices=PROBE_CLASSIFIERS, default=None,
                        help="default logreg (data.task=regression: ridge, the only one it takes)")
    parser.add_argument("--out", default=None, help="write a submission CSV here (and <out>_probs.csv)")
    parser.add_argument("--no-cache", action="store_true", help="compute the features again, write no cache")
    parser.add_argument("--meta", action="store_true", help="the metadata-only baseline (data.meta_cols) instead")
    args, cfg = parse_config(parser, argv)
    if args.meta:
        if args.out is not None or args.classifier is not None:
            raise UserError("src.probe --meta fits gradient boosting on the metadata and writes no submission; drop "
                            "--out and --classifier")
        from src.analysis.meta_probe import run_meta_probe

        run_meta_probe(cfg)
        return
    from src.analysis.probe import run_probe  # after parsing: --help imports nothing heavy

    run_probe(cfg, args.classifier, args.out, cache=not args.no_cache)


if __name__ == "__main__":
    run_cli(main)
