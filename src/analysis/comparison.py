"""Several experiments side by side (`python -m src.report --compare A B C`): their validation
curves overlaid (mean over folds with a +-1 std band) and one CV row per experiment, with the
settings that differ between them as columns.

    outputs/compare/<A>+<B>+<C>/compare.html  compare.csv  curves.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.analysis.figures import compare_curves
from src.analysis.html_page import Page
from src.analysis.oof_review import read_member_oof
from src.core.config import Config
from src.core.utils import UserError, atomic_save
from src.data.answers import to_answers
from src.ensembling.write_guard import check_writable
from src.evaluation.metrics import compute_metric
from src.runs.checkpoint import config_diff
from src.runs.layout import fold_paths, oof_probs
from src.runs.members import Member, open_member

# Keys that differ between any two experiments by construction, or say nothing of the recipe.
NOT_RECIPE = ("experiment.name", "experiment.output_dir", "wandb.", "loader.num_workers", "data.dir")


@dataclass
class Comparison:
    html: Path
    table: pd.DataFrame
    curves: Path


def _row(m: Member, metric: str) -> tuple[dict, set[str]]:
    oof = read_member_oof(m.exp_dir, m.folds, m.classes, m.records)
    images = set(oof["id"])
    oof, probs = to_answers(oof, oof_probs(oof, m.classes), m.task, m.cfg.data.aggregate)  # scored as answers
    y = m.task.targets(oof["label"])
    base = m.task.report_metrics
    names = base + ((metric,) if metric not in base else ())
    row = {"experiment": m.name, "folds": len(m.folds), "oof_images": len(images),
           "epochs": max(int(r.get("epochs_run") or 0) for r in m.records.values()),
           **{f"oof_{n}": compute_metric(n, y, probs) for n in names}}
    return row, images


def _differing(members: list[Member]) -> list[str]:
    """Config keys whose values are not the same in every experiment (first fold's config each)."""
    first = members[0].cfg.to_dict()
    keys = sorted({k for m in members[1:] for k in config_diff(first, m.cfg.to_dict())})
    return [k for k in keys if not k.startswith(NOT_RECIPE)]


def _value(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return str(cfg) if isinstance(cfg, (list, dict)) else cfg


def build_comparison(cfg: Config, names: list[str], out_dir: str | Path | None = None) -> Comparison:
    """Write the comparison of experiments `names` (at least two); return its table and paths."""
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--compare takes two or more different experiments, got {names}")
    members = [open_member(n, cfg.experiment.output_dir, "warn", cfg.data.dir) for n in names]
    for m in members[1:]:
        if m.classes != members[0].classes:
            raise UserError(f"{members[0].name} and {m.name} have different class lists; compare runs of one competition")
    metric = members[0].cfg.metric.name
    rows, id_sets = zip(*(_row(m, metric) for m in members))
    table = pd.DataFrame(rows)
    keys = _differing(members)
    for k in keys:
        table[k] = [_value(m.cfg.to_dict(), k) for m in members]
    out = Path(out_dir) if out_dir else Path(cfg.experiment.output_dir) / "compare" / "+".join(names)
    for name in ("compare.html", "compare.csv", "curves.png"):
        check_writable(out / name, cfg, "--out", "comparison", safe="outputs/compare/", given=out)
    curves = out / "curves.png"
    compare_curves({m.name: {k: pd.read_csv(fold_paths(m.exp_dir, k).history) for k in m.folds
                             if fold_paths(m.exp_dir, k).history.is_file()} for m in members}, metric, curves)
    atomic_save(out / "compare.csv", lambda tmp: table.to_csv(tmp, index=False))
    page = Page("Comparison: " + ", ".join(names))
    if any(s != id_sets[0] for s in id_sets[1:]):
        page.text("the experiments' OOF predictions cover different images (other folds finished, or other data): "
                  "their scores are not measured on the same set", "warn")
    page.heading(f"Validation curves (mean over folds, band +-1 std; {metric})")
    page.image(curves, "validation curves")
    page.heading("Cross-validation, one row per experiment (OOF over the finished folds)")
    page.table(table)
    page.text("settings that differ: " + (", ".join(keys) if keys else "none besides the name"))
    html = page.write(out / "compare.html")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {html}, {out / 'compare.csv'} and {curves}")
    return Comparison(html, table, curves)
