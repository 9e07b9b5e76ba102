"""Soft-voting ensemble of fold models and experiments, with test-time augmentation.

    python -m src.ensemble --config configs/demo.yaml            # views of ensemble.tta
    python -m src.ensemble --experiments exp_a exp_b --tta hflip vflip --weights auto
    python -m src.ensemble --tta d4 --voting geometric --out submissions/final.csv
    python -m src.ensemble --no-tta                               # identity view only

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

from src.blend import combine, fit_weights, log_probs
from src.config import Config, add_config_args, load_config
from src.data import load_test_table
from src.members import Member, member_oof, member_test, open_member
from src.metrics import compute_metric, softmax
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


def _open_members(cfg: Config, names: list[str]) -> list[Member]:
    members = [open_member(n, cfg.experiment.output_dir, cfg.ensemble.missing_folds, cfg.data.dir) for n in names]
    for m in members[1:]:
        if m.classes != members[0].classes:
            raise UserError(f"members {members[0].name} and {m.name} have different class lists; "
                            "blend experiments of one competition")
    return members


def _weights(weights, members: list[Member], fit_on: list[np.ndarray], y: np.ndarray, metric: str, voting: str
             ) -> np.ndarray:
    if weights == "auto":
        w = fit_weights([softmax(x) for x in fit_on], y, metric, voting)
        print("auto weights: " + ", ".join(f"{m.name} {wi:.3f}" for m, wi in zip(members, w)))
        return w
    if weights == "equal":
        return np.full(len(members), 1.0 / len(members))
    if len(weights) != len(members):
        raise UserError(f"{len(weights)} weights for {len(members)} members; give one per member")
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UserError(f"weights {list(weights)} must be non-negative with a positive sum; e.g. --weights 1,1 or auto")
    return w


def oof_report(cfg: Config, members: list[Member], views: list[str], weights, voting: str, rt: Runtime) -> np.ndarray:
    """Print the OOF score of each member and of the blend, without and with TTA; return the weights
    (fitted on the TTA OOF predictions when weights is 'auto')."""
    metric = cfg.metric.name
    report_views = [None] + ([views] if views != ["identity"] else [])
    rows, per_view, ids, y = [], [], None, None
    for rv in report_views:
        per = []
        for m in members:
            table, lg = member_oof(m, rv, rt, cfg.loader, voting)
            table = table.set_index("id")
            if ids is None:
                ids, y = table.index, table["target"].to_numpy()
            if set(table.index) != set(ids):
                raise UserError(f"member {m.name}'s OOF ids differ from {members[0].name}'s; members must share the training set")
            per.append(lg[table.index.get_indexer(ids)])
            rows.append({"member": m.name, "tta": "+".join(rv) if rv else "none", metric: compute_metric(metric, y, softmax(per[-1]))})
        per_view.append(per)
    w = _weights(weights, members, per_view[-1], y, metric, voting)
    if len(members) > 1:
        for rv, per in zip(report_views, per_view):
            rows.append({"member": "blend", "tta": "+".join(rv) if rv else "none",
                         metric: compute_metric(metric, y, combine(np.stack(per), voting, w))})
    print("OOF CV (" + metric + "):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return w


def run(cfg: Config, experiments: list[str] | None = None, tta: list[str] | None = None,
        weights: str | list[float] | None = None, voting: str | None = None, out: str | Path | None = None,
        fmt: str | None = None) -> Path:
    """Blend members' folds (x TTA views) into a submission CSV and return its path.

    Args:
        cfg: config naming the competition (data) and defaults (ensemble section).
        experiments: member experiment names (default: cfg's experiment).
        tta: view names (default: ensemble.tta; ['identity'] = no TTA).
        weights: 'equal', 'auto' or one weight per member (default: ensemble.weights).
        voting: soft | geometric | logits | hard (default: ensemble.voting).
        out: submission path (default: submissions/<members>[_tta].csv).
        fmt: submission format (default: ensemble.format).
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
    members = _open_members(cfg, names)
    if isinstance(weights, list):
        _weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)  # checked before any prediction
    classes = members[0].classes

    # 1) OOF report: each member and the blend, without and with TTA
    w = oof_report(cfg, members, views, weights, voting, rt)

    # 2) test predictions: folds x views per member (cached), blended within, then across members.
    # Hard votes are counted per member; members' vote shares are then averaged.
    member_probs = [member_test(m, test, views, rt, cfg.loader, voting) for m in members]
    probs = combine(np.stack([log_probs(p) for p in member_probs]), "soft" if voting == "hard" else voting, w)
    computed, cached = sum(m.computed for m in members), sum(m.cached for m in members)
    print(f"predictions (fold x view x split): {computed} computed, {cached} read from outputs/<member>/preds/")
    check_probs(probs)

    # 3) submission
    fmt = resolve_format(fmt or e.format, sample, cfg.data.id_col, classes, cfg.metric.name)
    sub = build_submission(sample, cfg.data.id_col, probs, classes, fmt)
    check_submission(sub, sample, cfg.data.id_col, classes, fmt)
    probs_path = write_submission(out, sub, probs, classes, sample, cfg.data.id_col)
    dist = pd.Series(np.asarray(classes)[probs.argmax(1)]).value_counts().reindex(classes, fill_value=0)
    print(f"wrote {out} ({len(sub)} rows, format {fmt}, {len(members)} members x folds x {len(views)} views); "
          f"probabilities in {probs_path}")
    print("predicted classes: " + ", ".join(f"{c} {n}" for c, n in dist.items()))
    return out


def parse_weights(text: str) -> str | list[float]:
    if text in ("equal", "auto"):
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--weights takes equal, auto or w1,w2,..., not '{text}'") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=None, help="member experiments (default: the config's)")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", nargs="*", default=None, help="TTA views (default, or without names: ensemble.tta)")
    tta.add_argument("--no-tta", action="store_true", help="identity view only")
    parser.add_argument("--weights", type=parse_weights, default=None, help="equal | auto | w1,w2,...")
    parser.add_argument("--voting", choices=["soft", "geometric", "logits", "hard"], default=None)
    parser.add_argument("--format", dest="fmt", choices=["auto", "label", "index", "proba", "binary"], default=None)
    parser.add_argument("--out", default=None, help="submission path (default: submissions/<members>[_tta].csv)")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    for name in ("experiments", "tta"):  # `--tta hflip runtime.device=cpu`: overrides are not views or members
        values = getattr(args, name)
        if values:
            args.overrides += [t for t in values if "=" in t]
            setattr(args, name, [t for t in values if "=" not in t] or (None if name == "experiments" else []))
    cfg = load_config(args.config, args.overrides)
    tta_views = ["identity"] if args.no_tta else (args.tta or None)  # None: ensemble.tta
    run(cfg, args.experiments, tta_views, args.weights, args.voting, args.out, args.fmt)


if __name__ == "__main__":
    run_cli(main)
