"""The blend: the one decision a submission stands on, settled once on the members' OOF predictions
and then applied to their test predictions. src.ensemble, src.pseudo and the Kaggle bundle fit it
with `Blend.fit`; the bundle's notebook applies the one the bundle was built with (`Blend.from_json`).

What is settled: the members and their folds, the TTA views (`auto`: chosen on OOF, see
view_selection), the member weights (`auto`: fitted on OOF), the voting rule, the thresholds of a
multi-label or ordinal task (fitted on OOF, never on test predictions) and the optional stacker.
Its JSON (written beside a submission as <name>.blend.json, and into the bundle's MANIFEST.json)
also records what it was fitted on: the sha1 of every member fold's best.pt and the OOF score,
with a digest of the whole, so an edited blend or a fold whose weights changed is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

from src.core.config import Config, LoaderCfg
from src.core.runtime import Runtime
from src.core.tasks import Task
from src.core.utils import UserError
from src.data.tables import load_test_table, require_data_dir, sample_id_col
from src.ensembling.oof import OofBlend, across_members, oof_blend, resolve_weights, within_member
from src.ensembling.submission import new_label_k
from src.ensembling.view_selection import resolve_views, view_effects
from src.evaluation.blending import as_logits, combine
from src.evaluation.decoding import decide, fit_decisions, fit_new_label, rank_with_new_label, score_decisions
from src.evaluation.metrics import compute_metric
from src.evaluation.stacking import fit_predict_test, nested_oof, stack_features
from src.runs.layout import fold_paths
from src.runs.members import Member, member_test

VERSION = 1  # of the JSON: a reader refuses another
_ADDED = {"new_label", "new_label_threshold", "top_k"}  # fields a blend written before them lacks (read as None)
_BOUND = {"task", "stacker_fit"}  # what a Blend holds for its members in this process, not in its JSON


def _stacked(cfg: Config, stack: str, blend: OofBlend, task: Task) -> OofBlend:
    """The OOF report with the stacker's nested OOF probabilities in place of the blend's, scored."""
    stacked = nested_oof(stack, stack_features(blend.per, task), blend.y, blend.folds, len(task.classes),
                         cfg.experiment.seed, task)
    cv = compute_metric(cfg.metric.name, blend.y, stacked)
    print(f"stacker {stack} (nested over {len(np.unique(blend.folds))} folds): OOF {cfg.metric.name} "
          f"{cv:.4f} against the blend's {blend.score:.4f}")
    return replace(blend, probs=stacked, score=cv)


def _grade_gain(cfg: Config, blend: OofBlend, task: Task, th: np.ndarray) -> float:
    """The OOF score of an ordinal submission decided by the thresholds between grades, printed
    with its gain over rounding."""
    metric, classes = cfg.metric.name, list(task.classes)
    rounded, cv = compute_metric(metric, blend.y, blend.probs), compute_metric(metric, blend.y, blend.probs, th)
    print("thresholds between grades (fitted on OOF): "
          + ", ".join(f"{a}|{b} {t:.3f}" for a, b, t in zip(classes, classes[1:], th)))
    print(f"OOF {metric} of what is written: {cv:.4f} (rounded: {rounded:.4f}, gain {cv - rounded:+.4f})")
    return cv


def _label_gain(cfg: Config, blend: OofBlend, task: Task, th: np.ndarray) -> float:
    """The OOF score of a multi-label submission decided by the labels' thresholds, printed with
    its gain over 0.5."""
    e, metric, classes = cfg.ensemble, cfg.metric.name, list(task.classes)
    at_half = score_decisions(metric, blend.y, blend.probs, np.full(len(classes), 0.5), e.min_labels)
    cv = score_decisions(metric, blend.y, blend.probs, th, e.min_labels)
    how = e.threshold if isinstance(e.threshold, str) else "fixed"
    print(f"thresholds ({how}, fitted on OOF): " + ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, th)))
    print(f"OOF {metric} of what is written: {cv:.4f} (at 0.5: {at_half:.4f}, gain {cv - at_half:+.4f})")
    return cv


# Task.decision -> the OOF score of what the submission holds once its decisions are fitted (argmax,
# value: the blend's own score, nothing fitted)
DECISION_SCORES = {"argmax": lambda cfg, blend, task, th: blend.score, "labels": _label_gain, "grades": _grade_gain,
                   "value": lambda cfg, blend, task, th: blend.score}


def _fitted_thresholds(cfg: Config, blend: OofBlend, task: Task) -> tuple[list[float] | None, float]:
    """The task's decision thresholds fitted on the OOF blend (never on test predictions; None where
    the argmax decides) and the OOF score of exactly what a submission with them holds."""
    th = fit_decisions(task, cfg.metric.name, blend.y, blend.probs, cfg.ensemble)
    score = DECISION_SCORES[task.decision](cfg, blend, task, th)
    return (None if th is None else [float(x) for x in th]), score


def _graded_score(cfg: Config, blend: OofBlend, task: Task, score: float) -> float:
    """The OOF score over the columns a sample submission of some of the classes (labels) holds, the
    ones written and graded (printed); `score` where it holds them all or is no probability table."""
    d = cfg.data
    cols = [c for c in pd.read_csv(require_data_dir(d) / d.sample_submission, nrows=0).columns if c != sample_id_col(d)]
    classes = list(task.classes)
    if not 2 <= len(cols) < len(classes) or not set(cols) <= set(classes):
        return score
    idx = [classes.index(c) for c in cols]
    cv = compute_metric(cfg.metric.name, task.one_hot(blend.y)[:, idx], blend.probs[:, idx])
    print(f"OOF {cfg.metric.name} over the sample's {len(idx)} of the {len(classes)} {task.noun} (what is written "
          f"and scored): {cv:.4f}, against {score:.4f} over all")
    return cv


def _fitted_new_label(cfg: Config, blend: OofBlend, task: Task, fmt: str | None) -> dict:
    """ensemble.new_label's threshold fitted on the OOF blend to MAP@k, printed with the OOF MAP@k with
    and without it: the Blend's fields and the OOF score of what is written ({} without a new label)."""
    e = cfg.ensemble
    if e.new_label is None:
        return {}
    sample = load_test_table(cfg.data)[1]
    k = new_label_k(e.new_label, sample, sample_id_col(cfg.data), fmt or e.format, cfg.metric.name, e.top_k, task)
    new = list(task.classes).index(e.new_label)
    th, with_new, without = fit_new_label(blend.probs, blend.y, k, new)
    first = float(np.mean(rank_with_new_label(blend.probs, k, new, th)[:, 0] == new))
    print(f"{e.new_label} threshold (fitted on OOF): {th:.2f}; OOF MAP@{k} {with_new:.4f} with it, {without:.4f} "
          f"without (gain {with_new - without:+.4f}; ranked first in {first:.0%} of the OOF rows)")
    return {"new_label": e.new_label, "new_label_threshold": th, "top_k": k, "score": with_new}


def body_digest(body: dict) -> str:
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Blend:
    """Members' test predictions -> the submission's probabilities and decisions, as fitted on OOF."""

    members: list[str]
    folds: dict[str, list[int]]
    best_sha1: dict[str, dict[str, str]]  # member -> fold -> sha1 of the best.pt it was fitted with
    classes: list[str]
    views: list[str]
    weights: list[float] | None  # one per member, as given or fitted; None when a stacker blends
    voting: str
    format: str  # the submission format asked for (auto: read from the sample submission when written)
    metric: str
    min_labels: int
    thresholds: list[float] | None = None  # a multi-label or ordinal task's, fitted on OOF
    stack: str | None = None
    oof_score: float | None = None  # the OOF score of what is written; None: the blend was given, not fitted
    tta_gain: float | None = None  # the OOF gain of views chosen by auto
    new_label: str | None = None  # top-k: the open-set class (ensemble.new_label) ...
    new_label_threshold: float | None = None  # ... and the threshold fitted on OOF where it enters a row
    top_k: int | None = None  # the k of the rows it enters
    task: Task | None = field(default=None, repr=False, compare=False)  # of the members it is bound to
    # a stacker's fit: (OOF features, targets, seed); not in the JSON, so a stacked blend is applied where fitted
    stacker_fit: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _of(cls, cfg: Config, members: list[Member], views: list[str], weights, voting: str, fmt: str | None,
            **fitted) -> Blend:
        return cls(members=[m.name for m in members], folds={m.name: list(m.folds) for m in members},
                   best_sha1={m.name: {str(k): m.sha(k) for k in m.folds} for m in members},
                   classes=list(members[0].classes), views=list(views),
                   weights=None if weights is None else [float(x) for x in weights], voting=voting,
                   format=fmt or cfg.ensemble.format, metric=cfg.metric.name, min_labels=cfg.ensemble.min_labels,
                   task=members[0].task, **fitted)

    @classmethod
    def fit(cls, cfg: Config, members: list[Member], views: list[str], weights, voting: str, rt: Runtime,
            stack: str | None = None, fmt: str | None = None) -> Blend:
        """The blend settled on the members' OOF predictions; its OOF report is printed.

        Args:
            views: view names; a list beginning with `auto` is chosen on OOF among the rest.
            weights: 'equal', 'auto' (fitted on the OOF predictions with the views) or one per member.
            voting: soft | geometric | logits | hard | rank.
            stack: a stacker fitted on the members' OOF predictions instead of weighted voting.
            fmt: the submission format (default ensemble.format).
        """
        views, choice = resolve_views(cfg, members, views, weights, voting, rt)
        oof = oof_blend(cfg, members, views, weights, voting, rt)
        if choice is None and len(views) > 1:
            view_effects(cfg, members, views, weights, voting, rt)  # says which configured view lowers OOF
        task = members[0].task
        fitted = _stacked(cfg, stack, oof, task) if stack else oof  # what the thresholds are fitted on
        thresholds, score = _fitted_thresholds(cfg, fitted, task)
        new = _fitted_new_label(cfg, fitted, task, fmt)
        score = new.pop("score", _graded_score(cfg, fitted, task, score))
        return cls._of(cfg, members, views, None if stack else oof.weights, voting, fmt, thresholds=thresholds,
                       stack=stack, oof_score=float(score), tta_gain=None if choice is None else float(choice.gain),
                       **new,
                       stacker_fit=(stack_features(oof.per, task), oof.y, cfg.experiment.seed) if stack else None)

    @classmethod
    def given(cls, cfg: Config, members: list[Member], views: list[str], weights, voting: str,
              thresholds: list[float] | None, fmt: str | None = None) -> Blend:
        """A blend whose views, weights (not auto) and thresholds are given, with no OOF report."""
        w = resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)
        return cls._of(cfg, members, views, w, voting, fmt,
                       thresholds=None if thresholds is None else [float(x) for x in thresholds])

    def member_probs(self, members: list[Member], test: pd.DataFrame, rt: Runtime, loader_cfg: LoaderCfg,
                     cache: bool = True) -> list[np.ndarray]:
        """Each member's test probabilities (N, C): its folds x views (cached), blended within it."""
        return [member_test(m, test, self.views, rt, loader_cfg, within_member(self.voting), cache) for m in members]

    def predict(self, member_probs: list[np.ndarray]) -> np.ndarray:
        """The blended test probabilities (N, C) of the members' (member_probs): hard votes are counted
        per member and members' vote shares then averaged; or the stacker fitted on OOF."""
        task = self._task()
        features = [as_logits(p, task) for p in member_probs]
        if self.stack:
            if self.stacker_fit is None:
                raise UserError(f"a blend stacked by {self.stack} is applied where it is fitted (its JSON does not "
                                "hold the OOF predictions the stacker learns from); run python -m src.ensemble --stack")
            x, y, seed = self.stacker_fit
            return fit_predict_test(self.stack, x, y, stack_features(features, task), len(self.classes), seed, task)
        return combine(np.stack(features), across_members(self.voting), np.asarray(self.weights), task)

    def decide(self, probs: np.ndarray) -> np.ndarray | None:
        """What the submission writes of a multi-label task (0/1, N x L) or an ordinal one (grades, N)
        with the thresholds fitted on OOF; None where the probabilities decide (argmax, top-k)."""
        if self.new_label_threshold is not None:  # top-k rows with the open-set label placed by its threshold
            new = list(self.classes).index(self.new_label)
            return rank_with_new_label(probs, self.top_k, new, self.new_label_threshold)
        th = None if self.thresholds is None else np.asarray(self.thresholds, dtype=np.float64)
        return decide(probs, th, self.min_labels, self._task())

    def _task(self) -> Task:
        if self.task is None:
            raise ValueError("bind the blend to its members first (Blend.from_json(text, members))")
        return self.task

    def with_sha1(self, best_sha1: dict[str, dict[str, str]]) -> Blend:
        """The same blend naming other files of the same weights (the bundle's slim best.pt)."""
        return replace(self, best_sha1=best_sha1)

    def to_dict(self) -> dict:
        body = {"version": VERSION, **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in _BOUND}}
        return {**body, "digest": body_digest(body)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, data: str | dict, members: list[Member] | None = None) -> Blend:
        """The blend a to_json (or to_dict) wrote, refused in one sentence when it was edited since;
        bound to `members` (checked to be the folds it was fitted with) when given."""
        body = dict(json.loads(data) if isinstance(data, str) else data)
        digest = body.pop("digest", None)
        names = {f.name for f in fields(cls)} - _BOUND
        if digest != body_digest(body) or body.pop("version", None) != VERSION or set(body) - names or names - set(body) - _ADDED:
            raise UserError("the blend was edited after it was fitted (its digest does not match what it holds); "
                            "fit it again (python -m src.ensemble, or python -m src.kaggle_kernel for a bundle) "
                            "instead of editing it")
        blend = cls(**{"new_label": None, "new_label_threshold": None, "top_k": None, **body})
        return blend if members is None else blend.bind(members)

    def bind(self, members: list[Member]) -> Blend:
        """This blend for `members`, once they are the members and fold weights it was fitted with."""
        if [m.name for m in members] != self.members or any(m.folds != self.folds[m.name] for m in members):
            raise UserError(f"the blend was fitted on members {self.folds} and is given "
                            f"{ {m.name: m.folds for m in members} }; fit it again for these")
        for m in members:
            for k in m.folds:
                if m.sha(k) != self.best_sha1[m.name][str(k)]:
                    raise UserError(f"{fold_paths(m.exp_dir, k).best} holds other weights than the blend was fitted "
                                    f"with ({m.name} fold {k}: its recorded sha1 differs); fit the blend again "
                                    "(python -m src.ensemble, or rebuild the bundle) instead of editing it")
        return replace(self, task=members[0].task)
