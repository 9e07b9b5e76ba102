"""The members' OOF predictions blended: the voting rules within and across members, the member
weights, and the OOF report (each member and the blend, without and with TTA) a Blend is fitted on
(src.ensembling.blend)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.core.config import Config, LoaderCfg
from src.core.runtime import Runtime
from src.core.utils import UserError
from src.evaluation.blending import combine, fit_weights
from src.evaluation.metrics import compute_metric
from src.runs.members import Member, member_oof


def within_member(voting: str) -> str:
    """The rule that blends one member's folds and views: rank voting ranks members' predictions,
    so within a member (models of one recipe, alike in calibration) probabilities are averaged;
    this keeps the test blend computed as its OOF estimate is (one prediction per member and image)."""
    return "soft" if voting == "rank" else voting


def across_members(voting: str) -> str:
    """The rule that blends members: hard votes are counted within a member (its folds and views),
    and members' vote shares are then averaged."""
    return "soft" if voting == "hard" else voting


def resolve_weights(weights, members: list[Member], fit_on: list[np.ndarray], y: np.ndarray, metric: str, voting: str
             ) -> np.ndarray:
    if weights == "auto":
        task = members[0].task
        w = fit_weights([task.activate(x) for x in fit_on], y, metric, voting, task)
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


@dataclass
class OofBlend:
    """The members' OOF predictions with the submission's views, and the blend's score on them."""

    weights: np.ndarray
    score: float  # the blend's OOF score with the views: the CV the submission stands on
    per: list[np.ndarray]  # each member's OOF log-probabilities (N, C), rows in `ids` order
    y: np.ndarray  # (N,) class indices, or (N, L) 0/1 for a multi-label task
    probs: np.ndarray  # the blend's OOF probabilities (N, C), what `score` scores
    folds: np.ndarray  # (N,) the validation fold of each row
    ids: pd.Index


def aligned_oof(members: list[Member], views: list[str] | None, rt: Runtime, loader_cfg: LoaderCfg, voting: str
                ) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Every member's OOF log-probabilities in the first member's row order, and that order's table
    (id, label, fold)."""
    per, base = [], None
    for m in members:
        table, lg = member_oof(m, views, rt, loader_cfg, within_member(voting))
        # member_oof has refused ids predicted twice (src.runs.members), so the rows align by id
        table = table.set_index("id")
        if base is None:
            base = table
        if set(table.index) != set(base.index):
            raise UserError(f"member {m.name}'s OOF ids differ from {members[0].name}'s; members must share the training set")
        per.append(lg[table.index.get_indexer(base.index)])
    return per, base


def oof_blend(cfg: Config, members: list[Member], views: list[str], weights, voting: str, rt: Runtime) -> OofBlend:
    """Print the OOF score of each member and of the blend, without and with TTA; return the
    weights (fitted on the TTA OOF predictions when weights is 'auto') and the blend's OOF score."""
    metric, task = cfg.metric.name, members[0].task
    report_views = [None] + ([views] if views != ["identity"] else [])
    rows, per_view, base = [], [], None
    for rv in report_views:
        per, base = aligned_oof(members, rv, rt, cfg.loader, voting)
        y = task.targets(base["label"])
        for m, lg in zip(members, per):
            rows.append({"member": m.name, "tta": "+".join(rv) if rv else "none",
                         metric: compute_metric(metric, y, task.activate(lg))})
        per_view.append(per)
    across = across_members(voting)
    w = resolve_weights(weights, members, per_view[-1], y, metric, across)
    blends = [combine(np.stack(per), across, w, task) for per in per_view]
    scores = [compute_metric(metric, y, p) for p in blends]
    member_rows = [r[metric] for r in rows]
    if len(members) > 1 or any(not np.isclose(a, b, rtol=0, atol=5e-5) for a, b in zip(scores, member_rows)):
        for rv, score in zip(report_views, scores):  # the score of exactly what the voting writes
            rows.append({"member": "blend", "tta": "+".join(rv) if rv else "none", metric: score})
    print("OOF CV (" + metric + "):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return OofBlend(w, scores[-1], per_view[-1], y, blends[-1], base["fold"].to_numpy(), base.index)
