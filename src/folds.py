"""Assign stratified folds once per competition, shared by every experiment and ensemble.

    python -m src.folds [--config configs/demo.yaml] [section.key=value ...]

The split is written to outputs/folds/<competition>_k<n>_s<seed>[_g<group>].csv with its class
list beside it (.json). A different fold count or seed is a different file; an existing file
whose ids no longer match train.csv stops the run instead of being rewritten.
"""

from __future__ import annotations

import argparse

import pandas as pd

from src.config import add_config_args, load_config
from src.splits import folds_path, load_or_create_folds
from src.utils import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    existed = folds_path(cfg).is_file()
    df, classes, path = load_or_create_folds(cfg)
    print(f"{'kept existing' if existed else 'wrote'} {path}: {len(df)} images, {len(classes)} classes, {cfg.data.n_folds} folds")
    print(pd.crosstab(df["label"], df["fold"]).reindex(classes).to_string())


if __name__ == "__main__":
    run_cli(main)
