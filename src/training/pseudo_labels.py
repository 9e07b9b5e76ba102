"""Pseudo-labels: a table of test images labelled by the blended test predictions, and the rows it
adds to training. `python -m src.pseudo` writes the table; `data.pseudo=<table>` trains with it.

    outputs/pseudo/<members>_r<round>_<sha8>.csv   (sha8: the first 8 hex digits of its content's sha1)
      id, label, confidence, round, prob_<class> ... (the blend's probabilities; used with --soft)

The name records the content, and training checks it: folds trained on two different tables have
two different `data.pseudo` values, so the usual checks refuse to mix them in one experiment or
to resume across them, and a table edited after it was written stops the run.

The table names test images by id only; training finds their files through the competition's
sample submission and test folder, so the table travels with the outputs. Pseudo rows join the
training part of every fold and never a validation part: OOF stays scored on real labels only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.config import Config
from src.core.runtime import Runtime
from src.core.utils import UserError, atomic_write_text
from src.core.views import parse_views
from src.data.tables import load_test_table
from src.evaluation.blending import combine, log_probs
from src.runs.layout import prob_columns
from src.runs.members import across_members, member_test, oof_report, open_members, resolve_weights

HARD_THRESHOLD = 0.9  # default confidence for hard pseudo-labels; soft ones keep every row by default


def default_table_path(cfg: Config, names: list[str], round_: int) -> Path:
    return Path(cfg.experiment.output_dir) / "pseudo" / f"{'+'.join(names)}_r{round_}.csv"


def pseudo_table(probs: np.ndarray, ids, classes: list[str], threshold: float, round_: int) -> pd.DataFrame:
    """Rows whose top probability reaches `threshold`: id, label (the argmax class), confidence,
    round and the probability of every class."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold} is not a probability; give a value in [0, 1], e.g. 0.9")
    conf = probs.max(1)
    keep = conf >= threshold
    table = pd.DataFrame({"id": np.asarray(ids)[keep], "label": np.asarray(classes)[probs.argmax(1)[keep]],
                          "confidence": conf[keep], "round": round_})
    table[prob_columns(classes)] = probs[keep]
    return table


def make_pseudo(cfg: Config, names: list[str], views: list[str] | None, weights, voting: str | None,
                threshold: float | None, soft: bool, round_: int, out: Path | None) -> Path:
    """Blend the members' test predictions and write the pseudo-label table (and a .json beside it).

    Args:
        names: member experiments; views: TTA views (None: ensemble.tta).
        weights: equal | auto | one per member; voting: as in src.ensemble (None: ensemble.voting).
        threshold: keep test images whose top probability reaches it (default 0.9, or 0 with soft).
        soft: training uses the probabilities as targets instead of the argmax label.
        round_: the pseudo-labelling round, recorded in the table and its default name.
    """
    e = cfg.ensemble
    views = parse_views(e.tta if views is None else (views or ["identity"]))
    voting = voting or e.voting
    threshold = (0.0 if soft else HARD_THRESHOLD) if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold} is not a probability; give a value in [0, 1], e.g. 0.9")
    out = Path(out) if out else default_table_path(cfg, names, round_)
    if out.suffix.lower() != ".csv" or out.resolve().is_relative_to(Path(cfg.data.dir).resolve()):
        raise UserError(f"--out {out} must be a .csv outside the competition folder {cfg.data.dir}")
    rt = Runtime.from_cfg(cfg.runtime)
    members = open_members(cfg, names)
    weights = e.weights if weights is None else weights
    w = (oof_report(cfg, members, views, weights, voting, rt) if weights == "auto"
         else resolve_weights(weights, members, [], np.zeros(0), cfg.metric.name, voting))
    test, _ = load_test_table(cfg.data)
    member_probs = [member_test(m, test, views, rt, cfg.loader, voting) for m in members]
    probs = combine(np.stack([log_probs(p) for p in member_probs]), across_members(voting), w)
    table = pseudo_table(probs, test["id"], members[0].classes, threshold, round_)
    if table.empty:
        raise UserError(f"no test image reaches confidence {threshold}; lower --threshold; nothing was written")
    text = table.to_csv(index=False)
    out = out.with_name(f"{out.stem}_{hashlib.sha1(text.encode()).hexdigest()[:8]}.csv")
    atomic_write_text(out, text)
    meta = {"members": names, "views": views, "voting": voting, "weights": [float(x) for x in w], "soft": soft,
            "threshold": threshold, "round": round_, "classes": members[0].classes, "rows": len(table),
            "test_rows": len(test), "data_dir": cfg.data.dir}
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    dist = table["label"].value_counts().reindex(members[0].classes, fill_value=0)
    print(f"wrote {out}: {len(table)} of {len(test)} test images (confidence >= {threshold:g}, "
          f"{'soft' if soft else 'hard'} targets, round {round_}); train with data.pseudo={out}")
    print("pseudo-labels per class: " + ", ".join(f"{c} {n}" for c, n in dist.items()))
    return out


def read_pseudo(path: str | Path, cfg: Config, classes: list[str]) -> tuple[pd.DataFrame, bool]:
    """(pseudo rows with id, label, path, target, and prob_<class> columns; soft?) for training."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"data.pseudo={path}: no such pseudo-label table (with its .json); write it with "
                        "python -m src.pseudo --experiments ...")
    tag, sha = path.stem.rsplit("_", 1)[-1], hashlib.sha1(path.read_bytes()).hexdigest()[:8]
    if tag != sha:
        raise UserError(f"data.pseudo={path} does not hold the table its name records (sha1 {sha}, name {tag}): it "
                        "was edited or not written by src.pseudo; write a new one with python -m src.pseudo")
    meta = json.loads(meta_path.read_text())
    if meta.get("classes") != classes:
        raise UserError(f"data.pseudo={path} was made for the classes {meta.get('classes')[:5]}..., not this "
                        "competition's; make it from this competition's members")
    df = pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)
    missing = [c for c in ["id", "label", *prob_columns(classes)] if c not in df]
    if missing:
        raise UserError(f"data.pseudo={path} lacks the columns {missing[:4]}; write it again with python -m src.pseudo")
    test, _ = load_test_table(cfg.data)
    path_of = dict(zip(test["id"], test["path"]))
    unknown = [i for i in df["id"] if i not in path_of]
    if unknown:
        raise UserError(f"data.pseudo={path} names {len(unknown)} images that are not test images of {cfg.data.dir} "
                        f"(e.g. {unknown[:3]}); make the table from this competition's test set")
    index = {c: i for i, c in enumerate(classes)}
    rows = df[["id", "label", *prob_columns(classes)]].copy()
    rows["path"] = [path_of[i] for i in rows["id"]]
    rows["target"] = rows["label"].map(index).astype(np.int64)
    return rows, bool(meta.get("soft"))


def add_pseudo(train: pd.DataFrame, cfg: Config, classes: list[str]) -> pd.DataFrame:
    """The training rows of a fold with the pseudo-labelled test images appended (fold -1,
    pseudo=True); unchanged without data.pseudo. Validation rows are never passed here."""
    if cfg.data.pseudo is None:
        return train
    rows, soft = read_pseudo(cfg.data.pseudo, cfg, classes)
    rows["fold"], rows["pseudo"], rows["pseudo_soft"] = -1, True, soft
    real = train.assign(pseudo=False, pseudo_soft=False)
    return pd.concat([real, rows], ignore_index=True)
