"""The ensemble as an API (what python -m src.ensemble and the Kaggle notebook run): the blend fitted on the OOF report (src.ensembling.blend), the test predictions of every member, fold and view, the submission, its blend JSON and its ledger row."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.core import distributed
from src.core.config import Config
from src.core.runtime import Runtime
from src.core.utils import UserError, counted
from src.core.views import parse_views, split_auto
from src.data.image_cache import cache_root
from src.data.loaders import check_test_images
from src.data.tables import load_test_table, sample_id_col
from src.ensembling.blend import Blend
from src.ensembling.ledger import free_submission_path, record_submission
from src.ensembling.oof import resolve_weights
from src.ensembling.submission import blend_path, checked_submission, new_label_k, submission_texts, write_submission
from src.ensembling.write_guard import check_submission_out
from src.evaluation.blending import check_voting
from src.evaluation.metrics import check_metric_fits
from src.runs.members import check_test_meta, open_members


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


def _submit(cfg: Config, out: tuple[Path, bool], probs: np.ndarray, blend: Blend, sample: pd.DataFrame,
            what: str) -> tuple[Path, dict[str, str]]:
    """Check and write the submission, its probabilities and its blend JSON (rank 0 writes), say what it
    holds and return its path and its sidecars' texts by kind (`out`: the path and whether --out named
    it; see ledger.free_submission_path)."""
    e, task, thresholds = cfg.ensemble, blend.task, blend.thresholds
    classes = list(task.classes)
    decisions = blend.decide(probs)
    sub, fmt = checked_submission(probs, sample, sample_id_col(cfg.data), blend.format, cfg.metric.name, e.top_k, decisions,
                                  task)
    texts = submission_texts(sub, probs, classes, sample, sample_id_col(cfg.data),
                             None if thresholds is None else np.asarray(thresholds, dtype=np.float64))
    texts["blend"] = blend.to_json()
    sidecars = {k: t for k, t in texts.items() if k != "submission"}
    out = free_submission_path(out[0], out[1], hashlib.sha1(texts["submission"].encode()).hexdigest(),
                               sidecars=sidecars)
    probs_path = distributed.from_main(lambda: write_submission(out, texts))
    print(f"wrote {out} ({len(sub)} rows, format {fmt}, {what}); {task.prob_word} in {probs_path}, the blend in "
          f"{blend_path(out)}")
    ranked = blend.new_label_threshold is not None  # decisions are each row's ranked classes: count the first
    counts = task.counts(probs, decisions[:, 0] if ranked else decisions)
    print(f"predicted {task.noun}: " + ", ".join(f"{c} {n}" for c, n in zip(classes, counts)))
    return out, sidecars


def blend_shape(folds: list[int], n_views: int) -> str:
    """'1 member x 2 folds x 2 views': what a blend averaged, from each member's fold count."""
    lo, hi = min(folds), max(folds)
    fold_text = counted(lo, "fold") if lo == hi else f"{lo} to {hi} folds"
    return f"{counted(len(folds), 'member')} x {fold_text} x {counted(n_views, 'view')}"


def _applied(blend: str | dict, given: dict) -> Blend:
    """A fitted blend's JSON (the bundle manifest's), once every decision also passed (`given`: key ->
    value or None) is the blend's own: a manifest edited in one place and not the other is refused."""
    fitted = Blend.from_json(blend)
    for key, value in given.items():
        if value is not None and value != getattr(fitted, key):
            raise UserError(f"the {key} passed ({value}) differ from those of the fitted blend "
                            f"({getattr(fitted, key)}); pass the blend alone, or fit it again")
    return fitted


def _check_format(cfg: Config, sample: pd.DataFrame, fmt: str, task, fitted_here: bool) -> None:
    """The submission format and ensemble.new_label refused before anything is predicted; the new
    label's threshold needs the OOF report, or a fitted blend holding it."""
    task.resolve_format(fmt, sample, sample_id_col(cfg.data), cfg.metric.name)
    new = cfg.ensemble.new_label
    new_label_k(new, sample, sample_id_col(cfg.data), fmt, cfg.metric.name, cfg.ensemble.top_k, task)
    if new is not None and not fitted_here:
        raise UserError(f"ensemble.new_label={new}'s threshold is fitted on the OOF report; keep the report on, or "
                        "apply a fitted blend (a Kaggle bundle's)")


def _checked_members(cfg: Config, names: list[str], weights, voting: str, report: bool, thresholds) -> list:
    """The members, once the weights, the metric and the thresholds are known to fit them (before any prediction)."""
    check_voting(voting, cfg.metric.name)
    members = open_members(cfg, names)
    if isinstance(weights, list):
        resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting)
    task = members[0].task
    check_metric_fits(cfg.metric.name, len(task.classes), task)
    task.check_voting(voting)
    if not report:  # a kernel passes the bundle's blend, or its thresholds
        task.check_thresholds(thresholds)
    return members


def run(cfg: Config, experiments: list[str] | None = None, tta: list[str] | None = None,
        weights: str | list[float] | None = None, voting: str | None = None, out: str | Path | None = None,
        fmt: str | None = None, report: bool = True, cache: bool = True, stack: str | None = None,
        thresholds: list[float] | None = None, blend: str | dict | None = None) -> Path:
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
        report: print the OOF report first and fit the blend on it (needs the members' oof.csv and
            training images); a Kaggle kernel turns it off and applies the blend the bundle was built with.
        cache: read and write outputs/<member>/preds/ (off where outputs are read-only).
        stack: a stacker fitted on the members' OOF predictions (logreg) instead of weighted voting;
            its OOF score comes from nested folds.
        thresholds: a multi-label or ordinal blend's thresholds when the report is off; with the report
            they are fitted there.
        blend: with the report off, a fitted blend's JSON (a bundle manifest's "blend") to apply: its
            members, views, weights, voting, format and thresholds, checked against the members' best.pt;
            any of those also passed must equal the blend's.
    """
    e = cfg.ensemble
    if blend is not None:
        if report:
            raise UserError("a fitted blend is applied with the report off (report=False); the report fits one")
        applied = _applied(blend, {"members": experiments, "views": tta, "weights": weights, "voting": voting,
                                   "format": fmt, "thresholds": thresholds})
        experiments, tta, weights, voting = applied.members, applied.views, applied.weights, applied.voting
        fmt, thresholds = applied.format, applied.thresholds
    names = experiments or [str(cfg.experiment.name)]
    views, auto = _parse_tta(tta, e.tta)
    weights = e.weights if weights is None else weights
    voting = voting or e.voting
    if not report and (auto or stack or weights == "auto"):
        raise UserError("--tta auto, --stack and weights=auto are fitted on the OOF report; fix the views and "
                        "weights when the report is off")
    tag = ("_tta" if auto or views != ["identity"] else "") + (f"_{stack}" if stack else "")
    out, explicit = (Path(out), True) if out else (Path("submissions") / ("+".join(names) + tag + ".csv"), False)
    check_submission_out(out, cfg, recorded_by_ledger=True)
    rt = Runtime.from_cfg(cfg.runtime)
    test, sample = load_test_table(cfg.data, cache_root(cfg))
    members = _checked_members(cfg, names, weights, voting, report, thresholds)
    for m in members:
        check_test_meta(m, test["id"])  # data.meta_cols: the test table, before anything is predicted
    if stack:
        members[0].task.check_second_level("--stack", stack)
    _check_format(cfg, sample, fmt or e.format, members[0].task, fitted_here=report or blend is not None)

    # 1) the blend: fitted on the OOF report (auto views, weights, stacker, thresholds) or given (a bundle's)
    if blend is not None:
        fitted = applied.bind(members)
    elif report:
        check_test_images(cfg, test["path"].tolist())  # before fit caches OOF predictions: nothing written
        fitted = Blend.fit(cfg, members, ["auto", *views] if auto else views, weights, voting, rt, stack, fmt)
    else:
        fitted = Blend.given(cfg, members, views, weights, voting, thresholds, fmt)

    # 2) test predictions: folds x views per member (cached), blended within, then across members
    probs = fitted.predict(fitted.member_probs(members, test, rt, cfg.loader, cache))
    computed, cached = sum(m.computed for m in members), sum(m.cached for m in members)
    print(f"predictions (fold x view x split): {computed} computed, {cached} read from outputs/<member>/preds/")

    # 3) submission (multi-label: the labels above the thresholds fitted on OOF; ordinal: the grades between
    # them; the thresholds and the blend are written beside it)
    out, sidecars = _submit(cfg, (out, explicit), probs, fitted, sample,
                            blend_shape([len(m.folds) for m in members], len(fitted.views)))

    # 4) the ledger (local runs: a kernel, report off, has no CV to record)
    if report:
        try:
            record_submission(out, members, fitted.views, fitted.weights, voting, stack, cfg.metric.name,
                              fitted.oof_score, fitted.tta_gain, sidecars)
        except UserError as e:  # the submission stands; only its record is missing
            raise UserError(f"{out} was written, but its ledger row was not: {e}") from None
    return out
