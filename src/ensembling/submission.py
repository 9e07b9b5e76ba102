"""Submission files: the format sample_submission.csv asks for, its checks, the atomic write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.core.utils import UserError, atomic_save


def resolve_format(fmt: str, sample: pd.DataFrame, id_col: str, classes: list[str], metric: str = "accuracy") -> str:
    """auto: one column per class -> proba; two classes, one column and a probability metric
    (roc_auc, log_loss) or fractional placeholders -> binary; one column -> label."""
    cols = [c for c in sample.columns if c != id_col]
    if fmt != "auto":
        return fmt
    if set(cols) == set(classes):
        return "proba"
    if len(cols) != 1:
        raise UserError(f"cannot tell the submission format from columns {cols}; set ensemble.format")
    values = pd.to_numeric(sample[cols[0]], errors="coerce")
    fractional = values.notna().all() and ((values % 1) != 0).any()
    if len(classes) == 2 and (metric in ("roc_auc", "log_loss") or fractional):
        return "binary"
    return "label"


def build_submission(sample: pd.DataFrame, id_col: str, probs: np.ndarray, classes: list[str], fmt: str) -> pd.DataFrame:
    """Fill sample_submission's columns, in its id order, from test probabilities (N, C)."""
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
        pred = probs.argmax(1)
        sub[cols[0]] = [classes[i] for i in pred] if fmt == "label" else pred
    return sub


def check_submission(sub: pd.DataFrame, sample: pd.DataFrame, id_col: str, classes: list[str], fmt: str) -> None:
    """Row count, ids and their order, columns, no NaN, labels in the class set."""
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


def check_probs(probs: np.ndarray) -> None:
    """The blended probability matrix: finite, in [0, 1], every row summing to 1."""
    if not np.isfinite(probs).all():
        raise UserError("the blended probabilities hold NaN or infinite values (a member predicted non-finite "
                        "numbers, or the weights are degenerate); nothing was written")
    if (probs < -1e-9).any() or not np.allclose(probs.sum(1), 1.0, atol=1e-5):
        raise UserError("the blended probabilities do not sum to 1 per row; check the weights and voting; nothing was written")


def check_out_path(out: Path, data_dir: str | Path) -> Path:
    """Where the submission and its _probs.csv go: files, outside the competition folder."""
    probs = out.with_name(out.stem + "_probs.csv")
    for p in (out, probs):
        if p.is_dir():
            raise UserError(f"--out {out}: {p} is a folder; give a file path such as {p / 'submission.csv'}")
        if p.resolve().is_relative_to(Path(data_dir).resolve()):
            raise UserError(f"--out {out} would write {p} inside the competition folder {data_dir} (data.dir), "
                            "whose files must not change; write to submissions/ or another folder")
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} is not a .csv path; name the submission file, e.g. submissions/final.csv")
    return probs


def write_submission(out: Path, sub: pd.DataFrame, probs: np.ndarray, classes: list[str], sample: pd.DataFrame,
                     id_col: str) -> Path:
    """<out> and <out stem>_probs.csv (the probability matrix, checked with check_probs first),
    each written atomically."""
    probs_df = pd.DataFrame(probs, columns=classes)
    probs_df.insert(0, id_col, sample[id_col].to_numpy())
    probs_path = out.with_name(out.stem + "_probs.csv")
    atomic_save(probs_path, lambda tmp: probs_df.to_csv(tmp, index=False))
    atomic_save(out, lambda tmp: sub.to_csv(tmp, index=False))
    return probs_path


def checked_submission(probs: np.ndarray, classes: list[str], sample: pd.DataFrame, id_col: str, fmt: str,
                       metric: str) -> tuple[pd.DataFrame, str]:
    """(the submission table of `probs`, its format): probabilities checked, `auto` resolved, the
    table built and checked against the sample submission. Nothing is written."""
    check_probs(probs)
    fmt = resolve_format(fmt, sample, id_col, classes, metric)
    sub = build_submission(sample, id_col, probs, classes, fmt)
    check_submission(sub, sample, id_col, classes, fmt)
    return sub, fmt
