"""TTA views chosen on OOF (`--tta auto`, `ensemble.tta: [auto, ...]`): start from the identity
view, then, in the candidates' order, keep a view only when adding it makes the members' blend
score strictly better on OOF; every candidate together is tried last, so the choice scores at least
as well on OOF as the identity view alone and as the whole list.

Every candidate is predicted once per member and fold (and cached in outputs/<member>/preds/);
the greedy steps then only re-blend those predictions. A fixed list of views gets the same look
(`view_effects`): the blend without each view, and a line for each one that lowers the OOF score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.core.config import Config
from src.core.runtime import Runtime
from src.core.views import split_auto
from src.data.answers import answer_rows, to_answers
from src.ensembling.oof import across_members, resolve_weights, within_member
from src.evaluation.blending import as_logits, combine
from src.evaluation.metrics import compute_metric, is_better, metric_spec
from src.runs.members import Member, member_oof_views


@dataclass
class ViewChoice:
    views: list[str]
    base: float  # the blend's OOF score with the identity view alone
    score: float  # ... with the chosen views
    steps: pd.DataFrame  # one row per candidate: view, score with it, kept

    @property
    def gain(self) -> float:
        """score - base, in the metric's units (negative is better for log_loss)."""
        return self.score - self.base


class _OofViews:
    """Every member's OOF logits per view, rows aligned on the first member's ids."""

    def __init__(self, members: list[Member], views: list[str], rt: Runtime, cfg: Config):
        self.views, self.members = views, members
        self.logits: list[dict[int, np.ndarray]] = []
        self.order: list[np.ndarray] = []
        self.tables: list[pd.DataFrame] = []  # each member's OOF image rows, in its logits' order
        base = None
        for m in members:
            table, logits = member_oof_views(m, views, rt, cfg.loader)
            self.tables.append(table)
            rows = answer_rows(table)  # one per answer with data.answer_id
            ids = pd.Index(rows["id"])
            base = ids if base is None else base
            self.logits.append(logits)
            self.order.append(ids.get_indexer(base))
        self.task = members[0].task
        self.y = self.task.targets(rows.set_index("id").loc[base, "label"])

    def member(self, i: int, views: list[str], voting: str) -> np.ndarray:
        """Member i's OOF log-probabilities with `views`, blended within each fold as member_oof does."""
        vi = [self.views.index(v) for v in views]
        m = self.members[i]
        task = self.task
        probs = np.concatenate([combine(self.logits[i][k][vi], within_member(voting), task=task) for k in m.folds])
        _, probs = to_answers(self.tables[i], probs, task, m.cfg.data.aggregate)  # as member_oof combines them
        return as_logits(probs, task)[self.order[i]]


def choose_views(cfg: Config, members: list[Member], candidates: list[str], weights, voting: str, rt: Runtime
                 ) -> ViewChoice:
    """Greedy forward selection of TTA views on the members' OOF blend; prints each step.

    Args:
        candidates: view names, tried in this order after identity.
        weights: member weights while choosing ('auto' chooses with equal weights; the final
            weights are fitted afterwards on the chosen views).
        voting: the voting rule (within members over folds and views, then across members).
    """
    metric = cfg.metric.name
    views = ["identity"] + [v for v in candidates if v != "identity"]
    data = _OofViews(members, views, rt, cfg)
    across = across_members(voting)
    w = resolve_weights("equal" if weights == "auto" else weights, members, [], data.y, metric, across)

    def score(sel: list[str]) -> float:
        per = [data.member(i, sel, voting) for i in range(len(members))]
        return compute_metric(metric, data.y, combine(np.stack(per), across, w, data.task))

    singles = [{"member": m.name, "view": v, metric: compute_metric(metric, data.y, data.task.activate(data.member(i, [v], voting)))}
               for i, m in enumerate(members) for v in views]
    print(f"OOF {metric} of each member with one view:")
    print(pd.DataFrame(singles).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    chosen, best = ["identity"], score(["identity"])
    steps = [{"view": "identity", metric: best, "kept": True}]
    for v in views[1:]:
        trial = score(chosen + [v])
        kept = is_better(metric, trial, best)
        steps.append({"view": v, metric: trial, "kept": kept})
        if kept:
            chosen, best = chosen + [v], trial
    if len(views) > 2 and len(chosen) < len(views):  # greedy can miss views that only help together
        together = score(views)
        kept = is_better(metric, together, best)
        steps.append({"view": "all together", metric: together, "kept": kept})
        if kept:
            chosen, best = list(views), together
    table = pd.DataFrame(steps)
    base = steps[0][metric]
    print(f"TTA auto (greedy on the OOF blend, {metric}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"TTA auto chose {'+'.join(chosen)}: OOF {metric} {base:.4f} -> {best:.4f} (gain {best - base:+.4f})")
    return ViewChoice(chosen, base, best, table)


def view_effects(cfg: Config, members: list[Member], views: list[str], weights, voting: str, rt: Runtime
                 ) -> list[str]:
    """The OOF blend with a fixed list of views, and without each one in turn; prints the table and a
    line for each view that lowers the OOF score. Returns those views."""
    metric = cfg.metric.name
    counts = [(m.computed, m.cached) for m in members]
    data = _OofViews(members, views, rt, cfg)  # the OOF predictions the blend's report made (cached)
    for m, (computed, cached) in zip(members, counts):  # a look at them: the printed counts stay the blend's
        m.computed, m.cached = computed, cached
    across = across_members(voting)
    w = resolve_weights("equal" if weights == "auto" else weights, members, [], data.y, metric, across)

    def score(sel: list[str]) -> float:
        per = [data.member(i, sel, voting) for i in range(len(members))]
        return compute_metric(metric, data.y, combine(np.stack(per), across, w, data.task))

    full = score(views)
    rows = [{"views": "all " + "+".join(views), metric: full}]
    lowers = []
    for v in views:
        without = score([u for u in views if u != v])
        rows.append({"views": f"without {v}", metric: without})
        if is_better(metric, without, full):
            lowers.append(v)
    print(f"TTA views on the OOF blend ({metric}):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    for v, row in zip(views, rows[1:]):
        if v in lowers:
            worse, better = ("lowers", "raise") if metric_spec(metric).higher_is_better else ("raises", "lower")
            print(f"view {v} {worse} the OOF {metric}: {full:.4f} with it, {row[metric]:.4f} without "
                  f"(--tta auto keeps only views that {better} it)")
    return lowers


def resolve_views(cfg: Config, members: list[Member], names: list[str], weights, voting: str, rt: Runtime
                  ) -> tuple[list[str], ViewChoice | None]:
    """The views of a list that may begin with `auto` (then chosen on OOF among the rest)."""
    views, auto = split_auto(names)
    if not auto:
        return views, None
    choice = choose_views(cfg, members, views, weights, voting, rt)
    return choice.views, choice
