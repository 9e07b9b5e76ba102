"""Submission files: the format sample_submission.csv asks for, its checks, the atomic write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.tasks import FORMATS, Task
from src.core.tasks.base import MAP_AT, note_left_out, placeholder_words
from src.core.utils import UserError, atomic_write_text


def resolve_top_k(sample: pd.DataFrame, id_col: str, metric: str, configured: int | None, n_classes: int) -> int:
    """How many ranked labels a topk row holds: ensemble.top_k, else the k of a map@k metric, else
    the placeholders' word count (when they hold several), else 5; never more than the classes."""
    col = [c for c in sample.columns if c != id_col][0]
    words = placeholder_words(sample, col)
    m = MAP_AT.match(metric)
    shown = int(words.mode()[0]) if len(sample) and words.max() > 1 else None  # the placeholders' ranked labels
    k = configured or (int(m.group(1)) if m else (shown or 5))
    if configured is None and m and shown not in (None, k):
        print(f"warning: the sample submission's placeholders hold {shown} labels and metric.name={metric} scores up "
              f"to {k}; writing {k} labels per row (a row with fewer can only lose MAP@{k}); set ensemble.top_k={shown} "
              "to write as many as the placeholders")
    if k > n_classes:
        raise UserError(f"a top-{k} submission needs at least {k} classes and the split has {n_classes}; set "
                        f"ensemble.top_k to {n_classes} or fewer")
    return k


def new_label_k(new_label: str | None, sample: pd.DataFrame, id_col: str, fmt: str, metric: str, top_k: int | None,
                task: Task) -> int | None:
    """The k of the top-k rows ensemble.new_label enters (None without one): refused in one sentence
    unless the submission is top-k and the label a class of the split."""
    if new_label is None:
        return None
    resolved = task.resolve_format(fmt, sample, id_col, metric)
    if resolved != "topk":
        raise UserError(f"ensemble.new_label={new_label} places an open-set label among ranked labels, and this "
                        f"submission's format is {resolved}, not topk (a map@k metric or ranked placeholders); set "
                        "ensemble.new_label to null")
    if new_label not in task.classes:
        raise UserError(f"ensemble.new_label={new_label} is not a class of the split ({list(task.classes)[:6]}...); "
                        "train it as a class (its images labelled so in train.csv) or set ensemble.new_label to null")
    return resolve_top_k(sample, id_col, metric, top_k, len(task.classes))


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
        note_left_out(cols, classes)
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
    elif fmt == "value":  # regression: the blended value in the sample's one column
        _one_prediction_column(fmt, cols)
        sub[cols[0]] = probs[:, 0]
    elif fmt == "topk":
        if len(cols) != 1:
            raise UserError(f"ensemble.format=topk needs one prediction column; sample_submission has {cols}")
        from src.evaluation.decoding import (
            rank_with_new_label,  # scikit-learn with it: src.ledger's --help imports this module
        )

        # ranked decisions (an open-set label placed by its threshold), else the top_k most probable
        best = decisions if decisions is not None and decisions.ndim == 2 else rank_with_new_label(probs, top_k)
        sub[cols[0]] = [" ".join(classes[i] for i in row) for row in best]
    else:
        raise UserError(f"ensemble.format={fmt} is not a submission format; use one of {', '.join(FORMATS)} or auto")
    return sub


def _one_prediction_column(fmt: str, cols: list[str]) -> None:
    if len(cols) != 1:
        raise UserError(f"ensemble.format={fmt} needs one prediction column; sample_submission has {cols}")


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


def check_probs(probs: np.ndarray, task: Task) -> None:
    """The blended probability matrix: finite, in [0, 1] and, one label per image, every row summing
    to 1 (a multi-label row holds one probability per label)."""
    if not np.isfinite(probs).all():
        raise UserError("the blended probabilities hold NaN or infinite values (a member predicted non-finite "
                        "numbers, or the weights are degenerate); nothing was written")
    if task.invalid_rows(probs, tol=1e-9, sum_tol=1e-5).any():
        raise UserError(f"the blended {task.prob_word} leave [0, 1] or, one label per image, do not sum to 1 per "
                        "row; check the weights and voting; nothing was written")


# The files written beside a submission <stem>.csv, by kind: its probability matrix, the thresholds
# fitted on OOF (multi-label and ordinal blends) and the blend (src.ensembling.blend).
SIDECARS = {"probs": "_probs.csv", "thresholds": "_thresholds.json", "blend": ".blend.json"}


def sidecar_paths(submission: Path) -> dict[str, Path]:
    """The sidecars of a submission file, by kind (SIDECARS)."""
    submission = Path(submission)
    return {kind: submission.with_name(submission.stem + end) for kind, end in SIDECARS.items()}


def sidecar_owner(path: Path) -> tuple[str, Path] | None:
    """(kind, the submission it belongs to) when `path` is named as a submission's sidecar, else None."""
    path = Path(path)
    for kind, end in SIDECARS.items():
        if path.name.endswith(end) and len(path.name) > len(end):
            return kind, path.with_name(path.name[: -len(end)] + ".csv")
    return None


def blend_path(submission: Path) -> Path:
    """The blend JSON beside a submission (src.ensembling.blend): <stem>.blend.json."""
    return sidecar_paths(submission)["blend"]


def submission_texts(sub: pd.DataFrame, probs: np.ndarray, classes: list[str], sample: pd.DataFrame, id_col: str,
                     thresholds: np.ndarray | None = None) -> dict[str, str]:
    """What a submission's files hold, by kind ("submission" and SIDECARS' kinds but the blend):
    the table, the probability matrix (id, then one column a class) and, for a multi-label or
    ordinal blend, the thresholds fitted on OOF (one per label, or one between each two grades,
    "0|1"). Computed before anything is written, so the ledger can compare them with its record."""
    texts = {"submission": sub.to_csv(index=False)}
    probs_df = pd.DataFrame(probs, columns=classes)
    probs_df.insert(0, id_col, sample[id_col].to_numpy())
    texts["probs"] = probs_df.to_csv(index=False)
    if thresholds is not None:
        keys = classes if len(thresholds) == len(classes) else [f"{a}|{b}" for a, b in zip(classes, classes[1:])]
        texts["thresholds"] = json.dumps({c: float(th) for c, th in zip(keys, thresholds)}, indent=2)
    return texts


def write_submission(out: Path, texts: dict[str, str]) -> Path:
    """Write <out> and its sidecars from `texts` (kind -> text, see submission_texts), each
    atomically and the submission last; return the path of the probabilities."""
    paths = {"submission": out, **sidecar_paths(out)}
    for kind in sorted(texts, key=lambda k: k == "submission"):
        atomic_write_text(paths[kind], texts[kind])
    return paths["probs"]


def checked_submission(probs: np.ndarray, sample: pd.DataFrame, id_col: str, fmt: str, metric: str,
                       top_k: int | None, decisions: np.ndarray | None, task: Task) -> tuple[pd.DataFrame, str]:
    """(the submission table of `probs`, its format, e.g. top5 for topk): probabilities checked,
    `auto` resolved by the task (Task.resolve_format), the table built and checked against the
    sample submission. `decisions` are a multi-label task's labels (0/1, N x L) or an ordinal
    task's grades (N,), from thresholds fitted on OOF. Nothing is written."""
    classes = list(task.classes)
    check_probs(probs, task)
    fmt = task.resolve_format(fmt, sample, id_col, metric)
    k = resolve_top_k(sample, id_col, metric, top_k, len(classes)) if fmt == "topk" else 5
    sub = build_submission(sample, id_col, probs, classes, fmt, k, decisions)
    check_submission(sub, sample, id_col, classes, fmt, k)
    return sub, (f"top{k}" if fmt == "topk" else fmt)
