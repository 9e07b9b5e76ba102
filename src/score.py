"""Score a submission locally against the competition's solution file.

    python -m src.score submissions/demo.csv [--solution inputs/digits/solution.csv] [--config ...]

Prints accuracy and the config's competition metric. The submission may hold a label column
(class names or indices) or one probability column per class.
"""

from __future__ import annotations

from pathlib import Path

from src.core.cli import command_parser, parse_config, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("submission", help="submission CSV to score")
    parser.add_argument("--solution", default=None, help="true labels (default: data.dir/data.solution)")
    args, cfg = parse_config(parser, argv)
    solution = args.solution or Path(cfg.data.dir) / cfg.data.solution
    from src.evaluation.metrics import metric_note  # after parsing: --help imports nothing heavy
    from src.evaluation.scoring import score_submission

    scores = score_submission(args.submission, solution, cfg)
    note = metric_note(cfg.metric.name)  # where competitions define the metric differently: which one this is
    print("  ".join(f"{k} {v:.4f}" for k, v in scores.items()) + (f"  ({note})" if note else ""))


if __name__ == "__main__":
    run_cli(main)
