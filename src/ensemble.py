"""Soft-voting ensemble of fold models and experiments, with test-time augmentation.

    python -m src.ensemble --config configs/demo.yaml            # views of ensemble.tta
    python -m src.ensemble --experiments exp_a exp_b --tta hflip vflip --weights auto
    python -m src.ensemble --tta d4 --voting geometric --out submissions/final.csv
    python -m src.ensemble --no-tta                               # identity view only
    torchrun --standalone --nproc_per_node 4 -m src.ensemble      # the images shared out over 4 GPUs

Each member is an experiment under outputs/<name>/ whose finished folds (done.json) are blended;
each fold's stored config rebuilds its model and transforms. First every member's test and
TTA-OOF logits per fold and view are written to outputs/<name>/preds/ (or read from there: a
re-blend with other weights, voting or format builds no model), then they are blended. Before
writing, the OOF score of every member and of the blend is printed without and with TTA.
Writes submissions/<name>.csv and <name>_probs.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from src import distributed
from src.blend import add_blend_args, combine, log_probs, split_blend_args
from src.config import Config, add_config_args, load_config
from src.data import load_test_table
from src.members import across_members, member_test, oof_report, open_members, resolve_weights
from src.runtime import Runtime
from src.submission import (
    build_submission,
    check_out_path,
    check_probs,
    check_submission,
    resolve_format,
    write_submission,
)
from src.tta import parse_views
from src.utils import UserError, run_cli


def run(cfg: Config, experiments: list[str] | None = None, tta: list[str] | None = None,
        weights: str | list[float] | None = None, voting: str | None = None, out: str | Path | None = None,
        fmt: str | None = None, report: bool = True, cache: bool = True) -> Path:
    """Blend members' folds (x TTA views) into a submission CSV and return its path.

    Args:
        cfg: config naming the competition (data) and defaults (ensemble section).
        experiments: member experiment names (default: cfg's experiment).
        tta: view names (default: ensemble.tta; ['identity'] = no TTA).
        weights: 'equal', 'auto' or one weight per member (default: ensemble.weights).
        voting: soft | geometric | logits | hard (default: ensemble.voting).
        out: submission path (default: submissions/<members>[_tta].csv).
        fmt: submission format (default: ensemble.format).
        report: print the OOF report first (needs the members' oof.csv and training images); a
            Kaggle kernel turns it off and passes the weights chosen when the bundle was built.
        cache: read and write outputs/<member>/preds/ (off where outputs are read-only).
    """
    e = cfg.ensemble
    names = experiments or [str(cfg.experiment.name)]
    views = parse_views(e.tta if tta is None else (tta or ["identity"]))
    weights = e.weights if weights is None else weights
    voting = voting or e.voting
    out = Path(out) if out else Path("submissions") / ("+".join(names) + ("_tta" if views != ["identity"] else "") + ".csv")
    check_out_path(out, cfg.data.dir)
    rt = Runtime.from_cfg(cfg.runtime)
    test, sample = load_test_table(cfg.data)
    members = open_members(cfg, names)
    if isinstance(weights, list):
        resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)  # checked before any prediction
    elif not report and weights == "auto":
        raise UserError("weights=auto are fitted on the OOF report; give explicit weights when the report is off")
    classes = members[0].classes

    # 1) OOF report: each member and the blend, without and with TTA
    if report:
        w = oof_report(cfg, members, views, weights, voting, rt)
    else:
        w = resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)

    # 2) test predictions: folds x views per member (cached), blended within, then across members.
    # Hard votes are counted per member; members' vote shares are then averaged.
    member_probs = [member_test(m, test, views, rt, cfg.loader, voting, cache) for m in members]
    probs = combine(np.stack([log_probs(p) for p in member_probs]), across_members(voting), w)
    computed, cached = sum(m.computed for m in members), sum(m.cached for m in members)
    print(f"predictions (fold x view x split): {computed} computed, {cached} read from outputs/<member>/preds/")
    check_probs(probs)

    # 3) submission
    fmt = resolve_format(fmt or e.format, sample, cfg.data.id_col, classes, cfg.metric.name)
    sub = build_submission(sample, cfg.data.id_col, probs, classes, fmt)
    check_submission(sub, sample, cfg.data.id_col, classes, fmt)
    probs_path = distributed.from_main(lambda: write_submission(out, sub, probs, classes, sample, cfg.data.id_col))
    dist = pd.Series(np.asarray(classes)[probs.argmax(1)]).value_counts().reindex(classes, fill_value=0)
    print(f"wrote {out} ({len(sub)} rows, format {fmt}, {len(members)} members x folds x {len(views)} views); "
          f"probabilities in {probs_path}")
    print("predicted classes: " + ", ".join(f"{c} {n}" for c, n in dist.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_blend_args(parser)
    parser.add_argument("--out", default=None, help="submission path (default: submissions/<members>[_tta].csv)")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    tta_views = split_blend_args(args)
    cfg = load_config(args.config, args.overrides)
    with distributed.launched(cfg.runtime.device):  # torchrun: each process predicts its share of the images
        run(cfg, args.experiments, tta_views, args.weights, args.voting, args.out, args.fmt)


if __name__ == "__main__":
    run_cli(main)
