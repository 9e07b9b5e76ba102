"""The submission ledger: one row per submission written, its CV (OOF) score, and the public
leaderboard score once Kaggle returned it. `python -m src.ledger` is its command line.

    submissions/ledger.csv   (beside the submissions: <folder of --out>/ledger.csv)
      time, file, members, views, weights, voting, stack, metric, cv, tta_gain, commit, configs, lb, sha1,
      sidecars

sha1 is the submission file's content when its row was written, and sidecars the sha1 of each file
written beside it (kind:sha1;...: probs <name>_probs.csv, thresholds <name>_thresholds.json, blend
<name>.blend.json). src.ensemble never writes other content over a file the ledger holds, nor over
its sidecars (a default name moves on to <name>_v2.csv, an explicit --out is refused; the same bytes
again are fine): the same CSV from another blend, other thresholds or other probabilities is another
submission. --lb refuses a file, or a sidecar, whose content no longer matches its row. Rows of
older ledgers have no sidecars: the sidecars on disk stand for them, and one they lack is not added.

Rows are appended under an exclusive lock (flock on ledger.csv.lock) and the file is replaced
atomically, so two ensembles finishing together both land and a crash never leaves half a row.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.utils import UserError, atomic_save
from src.ensembling.submission import sidecar_paths

DEFAULT_LEDGER = Path("submissions") / "ledger.csv"
COLUMNS = ["time", "file", "members", "views", "weights", "voting", "stack", "metric", "cv", "tta_gain", "commit",
           "configs", "lb", "sha1", "sidecars"]
MIN_ROWS_FOR_CORRELATION = 3  # fewer scored submissions give a correlation that means nothing


def ledger_path(submission: Path) -> Path:
    """The ledger beside a submission file."""
    return Path(submission).parent / "ledger.csv"


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit of the code (with '+dirty' when tracked files changed), or 'unknown'."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head[:12] + ("+dirty" if dirty else "")


def config_hash(config: dict) -> str:
    """A short fingerprint of a stored (resolved) config, for telling recipes apart in the ledger."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_ledger(path: Path) -> pd.DataFrame:
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        df, why = None, str(e).splitlines()[0][:80]
    else:
        why = None if "file" in df.columns else f"no 'file' column, columns {list(df.columns)[:4]}"
    if why is not None:
        raise UserError(f"{path} is not a ledger this code can read ({why}); move it aside (mv {path} {path}.bad) "
                        "and the next submission starts a new one")
    for c in COLUMNS:
        if c not in df:
            df[c] = ""
    return df


def _write(path: Path, df: pd.DataFrame) -> None:
    atomic_save(path, lambda tmp: df.to_csv(tmp, index=False))


def append_row(path: Path, row: dict) -> dict:
    """Append one submission's row (keys of COLUMNS; time and lb are filled here)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown ledger columns {sorted(unknown)}")
    full = {c: "" for c in COLUMNS}
    full.update({k: ("" if v is None else str(v)) for k, v in row.items()})
    full["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with _locked(path):
        df = read_ledger(path)
        df = pd.concat([df, pd.DataFrame([full])], ignore_index=True)
        _write(path, df)
    return full


def record_submission(out: Path, members: list, views: list[str], weights, voting: str, stack: str | None,
                      metric: str, cv: float, tta_gain: float | None, sidecars: dict[str, str] | None = None) -> dict:
    """Append a written submission's row to the ledger beside it and say so.

    Args:
        members: the ensemble's members (name, folds, records: each fold's done.json).
        weights: the member weights (None when a stacker blended).
        cv: the OOF score of what was submitted (the blend, or the stacker's nested OOF).
        tta_gain: the OOF gain of the views chosen by --tta auto, else None.
        sidecars: the text of each sidecar written beside it, by kind (none: those on disk).
    """
    path = ledger_path(out)
    row = append_row(path, {
        "file": str(out), "members": "+".join(m.name for m in members), "views": "+".join(views),
        "weights": "" if weights is None else ",".join(f"{x:.4g}" for x in np.asarray(weights) / np.sum(weights)),
        "voting": voting, "stack": stack or "", "metric": metric, "cv": repr(float(cv)), "commit": git_commit(),
        "tta_gain": "" if tta_gain is None else repr(float(tta_gain)),
        "configs": ";".join(f"{m.name}:{config_hash(m.records[m.folds[0]]['config'])}" for m in members),
        "sha1": _file_sha1(out), "sidecars": sidecar_cell(out, sidecars)})
    print(f"ledger: one row added to {path} (record the public score with python -m src.ledger --ledger {path} "
          f"--lb {out} SCORE)")
    return row


def _same_file(a: str, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def recorded(submission: Path) -> dict | None:
    """The latest ledger row (beside it) of a submission file that exists, else None."""
    submission = Path(submission)
    if not submission.is_file():
        return None
    try:
        df = read_ledger(ledger_path(submission))
    except UserError:  # an unreadable ledger is said when the row is added, after the submission is written
        return None
    hits = [i for i, f in enumerate(df["file"]) if _same_file(f, submission)]
    return df.iloc[hits[-1]].to_dict() if hits else None


def sidecar_cell(out: Path, texts: dict[str, str] | None) -> str:
    """The sidecars column: kind:sha1 of each sidecar's text (or, without texts, of the file on disk)."""
    if texts is None:
        texts = {k: p.read_text() for k, p in sidecar_paths(out).items() if p.is_file()}
    return ";".join(f"{k}:{hashlib.sha1(texts[k].encode()).hexdigest()}" for k in sorted(texts))


def _same_sidecars(row: dict, out: Path, texts: dict[str, str]) -> bool:
    """Whether writing sidecar `texts` (kind -> text) beside `out` keeps what its ledger row stands
    for: the recorded sha1s exactly (a sidecar added or left out is a change), or for a row from
    an older ledger, which has none, the sidecars on disk (one it lacks is not added)."""
    if row.get("sidecars"):
        return row["sidecars"] == sidecar_cell(out, texts)
    paths = sidecar_paths(out)
    return all(paths[k].is_file() and paths[k].read_bytes() == t.encode() for k, t in texts.items())


def free_submission_path(out: Path, explicit: bool, content_sha1: str, blend_text: str | None = None,
                         sidecars: dict[str, str] | None = None) -> Path:
    """Where a new submission (whose bytes hash to `content_sha1`, whose blend JSON is `blend_text`
    and whose other sidecars are `sidecars`: kind -> text) may go without writing other content over
    one the ledger recorded or over its sidecars: `out` (also when every file would be written
    again byte for byte), or for a default name the next free <stem>_v<k>.csv (said); an explicit
    --out is refused."""
    row = recorded(out)
    texts = {**(sidecars or {}), **({"blend": blend_text} if blend_text is not None else {})}
    if row is None or (row.get("sha1") == content_sha1 and _same_sidecars(row, out, texts)):
        return out
    scored = f", public score {row['lb']}" if row.get("lb") else ""
    if explicit:
        paths = sidecar_paths(out)
        others = " and ".join(p.name for k, p in paths.items() if k != "blend")
        raise UserError(f"--out {out} is a submission the ledger recorded ({row['time']}{scored}); writing over it "
                        f"(or over its blend, {paths['blend'].name}, or its {others}) with other content would leave "
                        "its row describing what it did not submit, so give another --out")
    k = 2
    while (new := out.with_name(f"{out.stem}_v{k}{out.suffix}")).exists() or recorded(new) is not None or \
            any(p.exists() for p in sidecar_paths(new).values()):
        k += 1
    print(f"note: {out} is a submission the ledger recorded ({row['time']}{scored}); writing {new} instead")
    return new


def record_lb(path: Path, file: str | Path, score: float) -> dict:
    """Set the public leaderboard score of a submission: the latest row written for that file."""
    file = Path(file)
    if not np.isfinite(score):
        raise UserError(f"leaderboard score {score} is not a finite number; pass the score Kaggle shows")
    with _locked(path):
        df = read_ledger(path)
        if df.empty:
            raise UserError(f"the ledger {path} has no rows yet; write a submission with python -m src.ensemble first")
        hits = [i for i, f in enumerate(df["file"]) if _same_file(f, file)]
        if not hits:  # the file may have been moved: match its name if that is unambiguous
            hits = [i for i, f in enumerate(df["file"]) if Path(f).name == file.name]
            if len({Path(df["file"].iloc[i]).resolve() for i in hits}) > 1:
                raise UserError(f"several submissions in {path} are named {file.name}; give the path as written "
                                "in the ledger's file column")
        if not hits:
            raise UserError(f"{file} is not in the ledger {path}; give a file listed in its file column "
                            "(python -m src.ledger shows them)")
        row = df.iloc[hits[-1]]
        if row.get("sha1") and file.is_file() and _file_sha1(file) != row["sha1"]:
            raise UserError(f"{file} no longer holds what its ledger row recorded ({row['time']}): the score would "
                            "describe other content; record it for the file as it was submitted, or write a new "
                            "submission with python -m src.ensemble")
        _check_sidecars_kept(row, file)
        df.loc[hits[-1], "lb"] = repr(float(score))
        _write(path, df)
        return df.iloc[hits[-1]].to_dict()


def _check_sidecars_kept(row: pd.Series, file: Path) -> None:
    """Refuse a score for a submission whose sidecars on disk no longer hold what its row recorded."""
    recorded_sha1 = dict(kv.split(":", 1) for kv in row.get("sidecars", "").split(";") if ":" in kv)
    for kind, path in sidecar_paths(file).items():
        if kind in recorded_sha1 and path.is_file() and _file_sha1(path) != recorded_sha1[kind]:
            raise UserError(f"{path} ({kind}) no longer holds what the ledger row of {file} recorded "
                            f"({row['time']}): the score would describe other content; restore it, or write a "
                            "new submission with python -m src.ensemble")


def correlation(df: pd.DataFrame) -> dict | None:
    """Pearson and Spearman correlation of CV and LB over the rows that have both (one metric);
    None below MIN_ROWS_FOR_CORRELATION rows."""
    cv = pd.to_numeric(df["cv"], errors="coerce")
    lb = pd.to_numeric(df["lb"], errors="coerce")
    both = cv.notna() & lb.notna()
    if both.sum() < MIN_ROWS_FOR_CORRELATION:
        return None
    metrics = set(df.loc[both, "metric"])
    if len(metrics) > 1:
        return None
    x, y = cv[both], lb[both]
    if x.nunique() < 2 or y.nunique() < 2:
        return {"n": int(both.sum()), "pearson": float("nan"), "spearman": float("nan")}
    return {"n": int(both.sum()), "pearson": float(x.corr(y)), "spearman": float(x.corr(y, method="spearman"))}


def show(path: Path) -> str:
    """The ledger as a table (CV and LB side by side) and, with enough scored rows, their correlation."""
    df = read_ledger(path)
    if df.empty:
        return f"the ledger {path} is empty; every python -m src.ensemble run adds a row"
    cols = ["time", "file", "members", "views", "voting", "stack", "metric", "cv", "lb"]
    shown = df[cols].copy()
    for c in ("cv", "lb"):  # full precision stays in the file
        shown[c] = [f"{float(v):.4f}" if v else "" for v in shown[c]]
    text = shown.to_string(index=False)
    corr = correlation(df)
    scored = (pd.to_numeric(df["lb"], errors="coerce").notna()).sum()
    if corr is None:
        text += (f"\n{scored} submissions have a leaderboard score; the CV-LB correlation is shown from "
                 f"{MIN_ROWS_FOR_CORRELATION} on (one metric); record scores with --lb FILE SCORE")
    else:
        text += (f"\nCV vs LB over {corr['n']} submissions: Pearson {corr['pearson']:.3f}, "
                 f"Spearman {corr['spearman']:.3f}")
    return text
