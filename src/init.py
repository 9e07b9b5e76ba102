"""Read a downloaded competition folder and write its config, checked, one comment per key.

    python -m src.init inputs/<competition> [--name NAME] [--metric M] [--base RECIPE] [--guess] [--force]
    python -m src.init inputs/<competition> data.task=ordinal     # a key=value decides what the folder cannot

Reads the folder as Kaggle ships it (the sample submission, the training table or COCO JSON or class
folders, test.csv, the image folders and suffixes) and decides the layout, the id and label columns,
the task, the image folders, a group column and the metric, saying for each what it saw. The metric
comes from src/kaggle/competitions.py for the competitions listed there (keyed by the folder's name,
or --competition), else it is guessed from the task and said so. Before anything is written the config
is loaded through the schema, the training and test tables are read, the folds are drawn in memory
and a few images of each folder are decoded; then configs/<name>.yaml is written (--force replaces
one that src.init wrote; a hand-written config is never replaced). Where the folder reads two ways
(two candidate label columns, integer labels that could be grades or classes), it stops with one
sentence naming the key that decides, unless --guess lets it choose and say so.
Then: python -m src.folds / src.train --fold all / src.ensemble with --config configs/<name>.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from src.core.cli import command_parser, run_cli, split_overrides
from src.core.config import add_overrides


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("folder", help="the competition folder, e.g. inputs/aptos2019-blindness-detection")
    parser.add_argument("--name", default=None, help="the config's name (default: the folder's)")
    parser.add_argument("--competition", default=None, help="the Kaggle slug, where the folder is named otherwise")
    parser.add_argument("--metric", default=None, help="metric.name, where the table does not know the competition")
    parser.add_argument("--base", default="base.yaml",
                        help="the recipe the config builds on: base.yaml (default), demo.yaml (a quick CPU run), "
                             "recipes/<name>.yaml")
    parser.add_argument("--out", default=None, help="the file to write (default: configs/<name>.yaml)")
    parser.add_argument("--guess", action="store_true", help="where the folder reads two ways, take the first and say so")
    parser.add_argument("--force", action="store_true", help="replace a config that src.init wrote before")
    add_overrides(parser, "keys that decide for the folder (written into the config)")
    words, overrides = split_overrides(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_intermixed_args(words)
    from src.kaggle.init_config import init_config  # after parsing: --help loads neither pandas nor torch

    init_config(Path(args.folder), name=args.name, competition=args.competition, metric=args.metric,
                base=args.base, out=args.out, guess=args.guess, force=args.force, overrides=overrides)


if __name__ == "__main__":
    run_cli(main)
