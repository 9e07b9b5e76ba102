"""Submission files: the format sample_submission.csv asks for, its checks, the atomic write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.utils import UserError, atomic_save, atomic_write_text

FORMATS = "label, index, proba, binary, topk, tags"
_MAP_AT = re.compile(r"^map@(\d+)$")


def _words(sample: pd.DataFrame, col: str) -> pd.Series:
    return sample[col].astype(str).str.split().str.len()


def resolve_format(fmt: str, sample: pd.DataFrame, id_col: str, classes: list[str], metric: str = "accuracy",
                   kind: str = "multiclass") -> str:
    """auto: one column per class -> proba; a multi-label task's one column -> tags; an ordinal
    task's -> label (the grade); one column
    whose placeholders hold several space-separated labels, or a map@k metric -> topk; two classes,
    one column and a probability metric (roc_auc, log_loss) or fractional placeholders -> binary;
    one column -> label."""
    cols = [c for c in sample.columns if c != id_col]
    multilabel = kind == "multilabel"
    if kind == "ordinal" and fmt not in ("auto", "label", "index"):
        raise UserError(f"ensemble.format={fmt} does not write grades; an ordinal submission is label (the grade) or "
                        "index (its position among the grades)")
    if kind == "ordinal":
        if len(cols) != 1:
            raise UserError(f"an ordinal submission holds one grade column, and the sample submission has {cols[:6]}; "
                            "check data.sample_submission")
        return "label" if fmt == "auto" else fmt
    if multilabel and fmt not in ("auto", "proba", "tags"):
        raise UserError(f"ensemble.format={fmt} writes one label per image; a multi-label submission is tags "
                        "(labels above their thresholds) or proba (one probability column per label)")
    if fmt != "auto":
        return fmt
    if set(cols) == set(classes):
        return "proba"
    if len(cols) != 1:
        raise UserError(f"cannot tell the submission format from the sample submission's columns {cols[:6]}; "
                        f"set ensemble.format to one of {FORMATS}")
    if multilabel:
        unseen = sorted({t for v in sample[cols[0]].astype(str) for t in v.split()} - set(classes))
        if unseen:
            raise UserError(f"the sample submission's placeholders hold tags {unseen[:5]} that no training image has, so "
                            "no model of this split can predict them; check data.label_sep, or set ensemble.format=tags "
                            "if the placeholders are not labels")
        return "tags"
    if _MAP_AT.match(metric) or (len(sample) and (_words(sample, cols[0]) > 1).mean() > 0.5):
        return "topk"
    values = pd.to_numeric(sample[cols[0]], errors="coerce")
    fractional = values.notna().all() and ((values % 1) != 0).any()
    if len(classes) == 2 and (metric in ("roc_auc", "log_loss", "average_precision") or metric.startswith("pauc")
                              or fractional):
        return "binary"
    return "label"


def resolve_top_k(sample: pd.DataFrame, id_col: str, metric: str, configured: int | None, n_classes: int) -> int:
    """How many ranked labels a topk row holds: ensemble.top_k, else the k of a map@k metric, else
    the placeholders' word count (when they hold several), else 5; never more than the classes."""
    col = [c for c in sample.columns if c != id_col][0]
    words = _words(sample, col)
    m = _MAP_AT.match(metric)
    k = configured or (int(m.group(1)) if m else (int(words.mode()[0]) if len(sample) and words.max() > 1 else 5))
    if k > n_classes:
        raise UserError(f"a top-{k} submission needs at least {k} classes and the split has {n_classes}; set "
                        f"ensemble.top_k to {n_classes} or fewer")
    return k


def build_submission(sample: pd.DataFrame, id_col: str, probs: np.ndarray, classes: list[str], fmt: str,
                     top_k: int = 5, decisions: np.ndarray | None = None) -> pd.DataFrame:
    """Fill sample_submission's columns, in its id order, from test probabilities (N, C); topk
    rows hold the `top_k` most probable labels, best first, space-separated; tags rows the labels
    of the 0/1 `decisions` (N, L), space-separated; label and index rows the grade `decisions`
    (N,) of an ordinal task when given, else the argmax."""
    cols = [c for c in sample.columns if c != id_col]
    sub = sample.copy()
    if fmt == "proba":
        missing = [c for c in cols if c not in classes]
        if missing:
            raise UserError(f"sample_submission columns {missing[:5]} are not classes; set ensemble.format")
        for c in cols:
            sub[c] = probs[:, classes.index(c)]
    elif fmt == "binary":
        if len(classes) != 2 or len(cols) != 1:
            raise UserError(f"ensemble.format=binary needs 2 classes and one column; have {len(classes)} classes, columns {cols}")
        sub[cols[0]] = probs[:, 1]
    elif fmt in ("label", "index"):
        if len(cols) != 1:
            raise UserError(f"ensemble.format={fmt} needs one prediction column; sample_submission has {cols}")
        pred = decisions if decisions is not None and decisions.ndim == 1 else probs.argmax(1)  # ordinal: the grades
        sub[cols[0]] = [classes[i] for i in pred] if fmt == "label" else pred
    elif fmt == "tags":
        if len(cols) != 1 or decisions is None:
            raise UserError(f"ensemble.format=tags needs a multi-label task and one prediction column; sample_submission "
                            f"has {cols}")
        sub[cols[0]] = [" ".join(classes[j] for j in np.flatnonzero(row)) for row in decisions]
    elif fmt == "topk":
        if len(cols) != 1:
            raise UserError(f"ensemble.format=topk needs one prediction column; sample_submission has {cols}")
        best = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]  # ties: the class first in order
        sub[cols[0]] = [" ".join(classes[i] for i in row) for row in best]
    else:
        raise UserError(f"ensemble.format={fmt} is not a submission format; use one of {FORMATS} or auto")
    return sub


def check_submission(sub: pd.DataFrame, sample: pd.DataFrame, id_col: str, classes: list[str], fmt: str,
                     top_k: int = 5) -> None:
    """Row count, ids and their order, columns, no NaN, labels in the class set (topk: k distinct
    labels per row)."""
    if len(sub) != len(sample) or list(sub.columns) != list(sample.columns):
        raise UserError("the submission's shape or columns differ from sample_submission.csv")
    if not (sub[id_col].astype(str).to_numpy() == sample[id_col].astype(str).to_numpy()).all():
        raise UserError("the submission's ids are not sample_submission.csv's ids in its order")
    if sub.isna().any().any():
        raise UserError("the submission holds NaN values; a member predicted non-finite numbers")
    if fmt == "label":
        col = [c for c in sub.columns if c != id_col][0]
        bad = set(sub[col].astype(str)) - set(classes)
        if bad:
            raise UserError(f"predicted labels {sorted(bad)[:5]} are not in the class set")
    if fmt == "tags":
        tags = {t for row in sub[[c for c in sub.columns if c != id_col][0]].astype(str) for t in row.split()}
        if tags - set(classes):
            raise UserError(f"predicted tags {sorted(tags - set(classes))[:5]} are not labels of the split")
    if fmt == "topk":
        rows = sub[[c for c in sub.columns if c != id_col][0]].astype(str).str.split()
        if not all(len(r) == top_k == len(set(r)) and set(r) <= set(classes) for r in rows):
            raise UserError(f"a top-{top_k} row does not hold {top_k} distinct class labels; nothing was written")


def check_probs(probs: np.ndarray, multilabel: bool = False) -> None:
    """The blended probability matrix: finite, in [0, 1], every row summing to 1 (one label per
    image; a multi-label row holds one probability per label)."""
    if not np.isfinite(probs).all():
        raise UserError("the blended probabilities hold NaN or infinite values (a member predicted non-finite "
                        "numbers, or the weights are degenerate); nothing was written")
    if multilabel:
        if (probs < -1e-9).any() or (probs > 1 + 1e-9).any():
            raise UserError("the blended label probabilities leave [0, 1]; check the weights and voting; nothing was written")
        return
    if (probs < -1e-9).any() or not np.allclose(probs.sum(1), 1.0, atol=1e-5):
        raise UserError("the blended probabilities do not sum to 1 per row; check the weights and voting; nothing was written")


def blend_path(submission: Path) -> Path:
    """The blend JSON beside a submission (src.ensembling.blend): <stem>.blend.json."""
    return submission.with_name(submission.stem + ".blend.json")


def check_out_path(out: Path, data_dir: str | Path) -> Path:
    """Where the submission, its _probs.csv and its .blend.json go: files, outside the competition folder."""
    probs = out.with_name(out.stem + "_probs.csv")
    for p in (out, probs, blend_path(out)):
        if p.is_dir():
            raise UserError(f"--out {out}: {p} is a folder; give a file path such as {p / 'submission.csv'}")
        if p.resolve().is_relative_to(Path(data_dir).resolve()):
            raise UserError(f"--out {out} would write {p} inside the competition folder {data_dir} (data.dir), "
                            "whose files must not change; write to submissions/ or another folder")
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} is not a .csv path; name the submission file, e.g. submissions/final.csv")
    return probs


def write_submission(out: Path, sub: pd.DataFrame, probs: np.ndarray, classes: list[str], sample: pd.DataFrame,
                     id_col: str, thresholds: np.ndarray | None = None) -> Path:
    """<out> and <out stem>_probs.csv (the probability matrix, checked with check_probs first),
    and for a multi-label or ordinal blend <out stem>_thresholds.json (the thresholds fitted on
    OOF: one per label, or one between each two grades, "0|1"), each written atomically."""
    if thresholds is not None:
        keys = classes if len(thresholds) == len(classes) else [f"{a}|{b}" for a, b in zip(classes, classes[1:])]
        atomic_write_text(out.with_name(out.stem + "_thresholds.json"),
                          json.dumps({c: float(th) for c, th in zip(keys, thresholds)}, indent=2))
    probs_df = pd.DataFrame(probs, columns=classes)
    probs_df.insert(0, id_col, sample[id_col].to_numpy())
    probs_path = out.with_name(out.stem + "_probs.csv")
    atomic_save(probs_path, lambda tmp: probs_df.to_csv(tmp, index=False))
    atomic_save(out, lambda tmp: sub.to_csv(tmp, index=False))
    return probs_path


def checked_submission(probs: np.ndarray, classes: list[str], sample: pd.DataFrame, id_col: str, fmt: str,
                       metric: str, top_k: int | None = None, decisions: np.ndarray | None = None,
                       kind: str = "multiclass") -> tuple[pd.DataFrame, str]:
    """(the submission table of `probs`, its format, e.g. top5 for topk): probabilities checked,
    `auto` resolved, the table built and checked against the sample submission. `decisions` are a
    multi-label task's labels (0/1, N x L) or an ordinal task's grades (N,), from thresholds fitted
    on OOF. Nothing is written."""
    check_probs(probs, kind == "multilabel")
    fmt = resolve_format(fmt, sample, id_col, classes, metric, kind)
    k = resolve_top_k(sample, id_col, metric, top_k, len(classes)) if fmt == "topk" else 5
    sub = build_submission(sample, id_col, probs, classes, fmt, k, decisions)
    check_submission(sub, sample, id_col, classes, fmt, k)
    return sub, (f"top{k}" if fmt == "topk" else fmt)
