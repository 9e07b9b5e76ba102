"""The ensemble as an API (what python -m src.ensemble and the Kaggle notebook run): the OOF report, the views and weights fitted on it, the test predictions of every member, fold and view, the blend, the submission and its ledger row."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import distributed
from src.core.config import Config
from src.core.runtime import Runtime
from src.core.task import Task
from src.core.utils import UserError
from src.core.views import parse_views, split_auto
from src.data.tables import load_test_table
from src.ensembling.ledger import free_submission_path, record_submission
from src.ensembling.submission import check_out_path, checked_submission, write_submission
from src.ensembling.view_selection import choose_views, view_effects
from src.evaluation.blending import as_logits, check_voting, combine
from src.evaluation.decoding import decide, fit_decisions, score_decisions
from src.evaluation.metrics import check_metric_fits, compute_metric
from src.evaluation.stacking import fit_predict_test, nested_oof, stack_features
from src.runs.members import across_members, member_test, oof_blend, open_members, resolve_weights


def _parse_tta(tta: list[str] | None, default: list[str]) -> tuple[list[str], bool]:
    """(views, or the candidates for auto; auto?). None: the default views; ['auto', ...]: choose on OOF.
    A list without identity (--tta VIEW ... replaces the views) is said: the plain image is not predicted."""
    if tta and tta[0] == "auto":  # --tta auto [CANDIDATES]: the candidates, or ensemble.tta's views
        return (parse_views(tta[1:]) if tta[1:] else split_auto(default)[0]), True
    views, auto = split_auto(default if tta is None else (tta or ["identity"]))
    if auto:
        return views, True
    if "identity" not in views:
        print(f"note: the views {views} leave out identity, the plain image; predictions use only these (add "
              "identity to keep it, e.g. --tta identity " + " ".join(views) + ")")
    return views, False


def _stacked(cfg: Config, stack: str, blend, task: Task):
    """The OOF report with the stacker's nested OOF probabilities in place of the blend's, scored."""
    stacked = nested_oof(stack, stack_features(blend.per), blend.y, blend.folds, len(task.classes),
                         cfg.experiment.seed, task)
    cv = compute_metric(cfg.metric.name, blend.y, stacked)
    print(f"stacker {stack} (nested over {len(np.unique(blend.folds))} folds): OOF {cfg.metric.name} "
          f"{cv:.4f} against the blend's {blend.score:.4f}")
    return replace(blend, probs=stacked, score=cv)


def _grade_gain(cfg: Config, blend, task: Task, th: np.ndarray) -> float:
    """The OOF score of an ordinal submission decided by the thresholds between grades, printed
    with its gain over rounding."""
    metric, classes = cfg.metric.name, list(task.classes)
    rounded, cv = compute_metric(metric, blend.y, blend.probs), compute_metric(metric, blend.y, blend.probs, th)
    print("thresholds between grades (fitted on OOF): "
          + ", ".join(f"{a}|{b} {t:.3f}" for a, b, t in zip(classes, classes[1:], th)))
    print(f"OOF {metric} of what is written: {cv:.4f} (rounded: {rounded:.4f}, gain {cv - rounded:+.4f})")
    return cv


def _label_gain(cfg: Config, blend, task: Task, th: np.ndarray) -> float:
    """The OOF score of a multi-label submission decided by the labels' thresholds, printed with
    its gain over 0.5."""
    e, metric, classes = cfg.ensemble, cfg.metric.name, list(task.classes)
    at_half = score_decisions(metric, blend.y, blend.probs, np.full(len(classes), 0.5), e.min_labels)
    cv = score_decisions(metric, blend.y, blend.probs, th, e.min_labels)
    how = e.threshold if isinstance(e.threshold, str) else "fixed"
    print(f"thresholds ({how}, fitted on OOF): " + ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, th)))
    print(f"OOF {metric} of what is written: {cv:.4f} (at 0.5: {at_half:.4f}, gain {cv - at_half:+.4f})")
    return cv


# Task.decision -> the OOF score of what the submission holds once its decisions are fitted (argmax:
# the blend's own score, nothing fitted)
DECISION_SCORES = {"argmax": lambda cfg, blend, task, th: blend.score, "labels": _label_gain, "grades": _grade_gain}


def _fitted_thresholds(cfg: Config, blend, task: Task) -> tuple[np.ndarray | None, float]:
    """The task's decision thresholds fitted on the OOF blend (never on test predictions; None where
    the argmax decides) and the OOF score of exactly what a submission with them holds."""
    th = fit_decisions(task, cfg.metric.name, blend.y, blend.probs, cfg.ensemble)
    return th, DECISION_SCORES[task.decision](cfg, blend, task, th)


def _submit(cfg: Config, out: tuple[Path, bool], probs: np.ndarray, task: Task, sample: pd.DataFrame, fmt: str,
            thresholds: np.ndarray | None, what: str) -> Path:
    """Check and write the submission and its probabilities (rank 0 writes), say what it holds and
    return its path (`out`: the path and whether --out named it; see ledger.free_submission_path)."""
    e, classes = cfg.ensemble, list(task.classes)
    decisions = decide(probs, thresholds, e.min_labels, task)
    sub, fmt = checked_submission(probs, sample, cfg.data.id_col, fmt, cfg.metric.name, e.top_k, decisions, task)
    out = free_submission_path(out[0], out[1], hashlib.sha1(sub.to_csv(index=False).encode()).hexdigest())
    probs_path = distributed.from_main(lambda: write_submission(out, sub, probs, classes, sample, cfg.data.id_col,
                                                                thresholds))
    print(f"wrote {out} ({len(sub)} rows, format {fmt}, {what}); {task.prob_word} in {probs_path}")
    print(f"predicted {task.noun}: " + ", ".join(f"{c} {n}" for c, n in zip(classes, task.counts(probs, decisions))))
    return out


def blend_thresholds(cfg: Config, members: list, views: list[str], weights, voting: str, rt: Runtime
                     ) -> tuple[np.ndarray, list[float] | None]:
    """(weights, thresholds) of a blend, fitted on its OOF report (for the Kaggle bundle); no
    thresholds where the argmax decides."""
    blend = oof_blend(cfg, members, views, weights, voting, rt)
    th = _fitted_thresholds(cfg, blend, members[0].task)[0]
    return blend.weights, None if th is None else [float(x) for x in th]


def _checked_members(cfg: Config, names: list[str], weights, voting: str, report: bool, thresholds) -> list:
    """The members, once the weights, the metric and the thresholds are known to fit them (before any prediction)."""
    check_voting(voting, cfg.metric.name)
    members = open_members(cfg, names)
    if isinstance(weights, list):
        resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)
    task = members[0].task
    check_metric_fits(cfg.metric.name, len(task.classes), task)
    if not report:
        task.check_thresholds(thresholds)
    return members


def run(cfg: Config, experiments: list[str] | None = None, tta: list[str] | None = None,
        weights: str | list[float] | None = None, voting: str | None = None, out: str | Path | None = None,
        fmt: str | None = None, report: bool = True, cache: bool = True, stack: str | None = None,
        thresholds: list[float] | None = None) -> Path:
    """Blend members' folds (x TTA views) into a submission CSV and return its path.

    Args:
        cfg: config naming the competition (data) and defaults (ensemble section).
        experiments: member experiment names (default: cfg's experiment).
        tta: view names (default: ensemble.tta; ['identity'] = no TTA; ['auto', candidates...]:
            the views that improve the OOF blend, chosen greedily among the candidates or ensemble.tta).
        weights: 'equal', 'auto' or one weight per member (default: ensemble.weights).
        voting: soft | geometric | logits | hard | rank (default: ensemble.voting).
        out: submission path (default: submissions/<members>[_tta][_stack].csv).
        fmt: submission format (default: ensemble.format).
        report: print the OOF report first (needs the members' oof.csv and training images); a
            Kaggle kernel turns it off and passes the weights chosen when the bundle was built.
        cache: read and write outputs/<member>/preds/ (off where outputs are read-only).
        stack: a stacker fitted on the members' OOF predictions (logreg) instead of weighted voting;
            its OOF score comes from nested folds.
        thresholds: a multi-label or ordinal blend's thresholds when the report is off (a Kaggle kernel: those
            fitted on OOF when the bundle was built); with the report they are fitted there.
    """
    e = cfg.ensemble
    names = experiments or [str(cfg.experiment.name)]
    views, auto = _parse_tta(tta, e.tta)
    weights = e.weights if weights is None else weights
    voting = voting or e.voting
    if not report and (auto or stack or weights == "auto"):
        raise UserError("--tta auto, --stack and weights=auto are fitted on the OOF report; fix the views and "
                        "weights when the report is off")
    tag = ("_tta" if auto or views != ["identity"] else "") + (f"_{stack}" if stack else "")
    out, explicit = (Path(out), True) if out else (Path("submissions") / ("+".join(names) + tag + ".csv"), False)
    check_out_path(out, cfg.data.dir)
    rt = Runtime.from_cfg(cfg.runtime)
    test, sample = load_test_table(cfg.data)
    members = _checked_members(cfg, names, weights, voting, report, thresholds)
    classes, task = members[0].classes, members[0].task
    thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)

    # 1) OOF report: views chosen on OOF (auto), each member and the blend without and with TTA, the stacker
    cv, choice, blend = None, None, None
    if report:
        if auto:
            choice = choose_views(cfg, members, views, weights, voting, rt)
            views = choice.views
        blend = oof_blend(cfg, members, views, weights, voting, rt)
        if not auto and len(views) > 1:
            view_effects(cfg, members, views, weights, voting, rt)  # says which configured view lowers OOF
        fitted = _stacked(cfg, stack, blend, task) if stack else blend  # what the thresholds are fitted on
        w = blend.weights
        thresholds, cv = _fitted_thresholds(cfg, fitted, task)
    else:
        w = resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)

    # 2) test predictions: folds x views per member (cached), blended within, then across members.
    # Hard votes are counted per member; members' vote shares are then averaged.
    member_probs = [member_test(m, test, views, rt, cfg.loader, voting, cache) for m in members]
    features = [as_logits(p, task) for p in member_probs]
    probs = (fit_predict_test(stack, stack_features(blend.per), blend.y, stack_features(features), len(classes),
                              cfg.experiment.seed, task) if stack
             else combine(np.stack(features), across_members(voting), w, task))
    computed, cached = sum(m.computed for m in members), sum(m.cached for m in members)
    print(f"predictions (fold x view x split): {computed} computed, {cached} read from outputs/<member>/preds/")

    # 3) submission (multi-label: the labels above the thresholds fitted on OOF; ordinal: the grades between
    # them; the thresholds are written beside it)
    out = _submit(cfg, (out, explicit), probs, task, sample, fmt or e.format, thresholds, f"{len(members)} members x folds x "
            f"{len(views)} views")

    # 4) the ledger (local runs: a kernel, report off, has no CV to record)
    if report:
        try:
            record_submission(out, members, views, None if stack else w, voting, stack, cfg.metric.name, cv,
                              choice.gain if choice else None)
        except UserError as e:  # the submission stands; only its record is missing
            raise UserError(f"{out} was written, but its ledger row was not: {e}") from None
    return out
