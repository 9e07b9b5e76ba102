"""Pseudo-labels: a table of test images labelled by the blended test predictions, and the rows it
adds to training. `python -m src.pseudo` writes the table; `data.pseudo=<table>` trains with it.

    outputs/pseudo/<members>_r<round>_<sha8>.csv   (sha8: 8 hex digits of the sha1 of it and its .json)
      id, label, confidence, round, prob_<class> ... (the blend's probabilities; used with --soft)
    outputs/pseudo/<members>_r<round>_<sha8>.json  how it was made, and whether its targets are soft

The name records the content of both files (a hard and a soft table of the same rows get two
names), and training checks it: folds trained on two different tables have
two different `data.pseudo` values, so the usual checks refuse to mix them in one experiment or
to resume across them, and a table edited after it was written stops the run.

Multi-label tables keep an image when every label's probability is at least the threshold or at
most one minus it, labelled with the labels above 0.5 (soft: every label's probability is its
target); ordinal tables keep an image whose grade score lies within one minus the threshold of a
grade, labelled with that grade (hard only: a grade is trained as a number).

The table names test images by id only; training finds their files through the competition's
sample submission and test folder, so the table travels with the outputs. Pseudo rows join the
training part of every fold and never a validation part: OOF stays scored on real labels only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.config import Config
from src.core.runtime import Runtime
from src.core.tasks import Task
from src.core.utils import UserError, atomic_write_text
from src.core.views import split_auto
from src.data.answers import refuse_answers
from src.data.image_cache import cache_root
from src.data.pseudo_rows import pseudo_digest
from src.data.tables import load_test_table, prob_columns
from src.ensembling.blend import Blend
from src.ensembling.write_guard import check_writable
from src.runs.members import check_test_meta, open_members

HARD_THRESHOLD = 0.9  # default confidence for hard pseudo-labels; soft ones keep every row by default


def default_table_path(cfg: Config, names: list[str], round_: int) -> Path:
    return Path(cfg.experiment.output_dir) / "pseudo" / f"{'+'.join(names)}_r{round_}.csv"


def pseudo_table(probs: np.ndarray, ids, task: Task, threshold: float, round_: int) -> pd.DataFrame:
    """Rows whose confidence reaches `threshold`: id, label, confidence, round and the probability
    of every class. One label per image: the top probability and its class (ordinal: the weight of
    the nearest grade, 1 - the score's distance to it, and that grade); multi-label: the least sure
    label's max(p, 1 - p), and the labels at 0.5 or above."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold} is not a probability; give a value in [0, 1], e.g. 0.9")
    classes = np.asarray(task.classes)
    conf, labels = task.confidence(probs), task.predicted(probs)
    keep = conf >= threshold
    table = pd.DataFrame({"id": np.asarray(ids)[keep], "label": labels[keep], "confidence": conf[keep],
                          "round": round_})
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
    names_views = e.tta if views is None else (views or ["identity"])
    split_auto(names_views)  # a wrong view name stops here, before any prediction
    voting = voting or e.voting
    threshold = (0.0 if soft else HARD_THRESHOLD) if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold} is not a probability; give a value in [0, 1], e.g. 0.9")
    out = Path(out) if out else default_table_path(cfg, names, round_)
    for path in (out, out.with_suffix(".json")):
        check_writable(path, cfg, "--out", "pseudo", safe="outputs/pseudo/", given=out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} is not a .csv path; name the table, e.g. outputs/pseudo/round1.csv")
    rt = Runtime.from_cfg(cfg.runtime)
    members = open_members(cfg, names)
    task = members[0].task
    task.check_stage("pseudo")
    refuse_answers(cfg.data, "src.pseudo", "labels test images from the test blend, which predicts answers")
    if soft:
        task.refuse_soft_targets("its pseudo-labels are hard (the nearest grade); drop --soft")
    weights = e.weights if weights is None else weights
    test, _ = load_test_table(cfg.data, cache_root(cfg))
    for m in members:
        check_test_meta(m, test["id"])  # data.meta_cols: the test table, before anything is predicted
    blend = Blend.fit(cfg, members, names_views, weights, voting, rt)  # [auto, ...]: views chosen on OOF
    probs = blend.predict(blend.member_probs(members, test, rt, cfg.loader))
    table = pseudo_table(probs, test["id"], task, threshold, round_)
    if table.empty:
        raise UserError(f"no test image reaches confidence {threshold}; lower --threshold; nothing was written")
    text = table.to_csv(index=False)
    meta = {"members": names, "views": blend.views, "voting": voting, "weights": blend.weights, "soft": soft,
            "threshold": threshold, "round": round_, "classes": members[0].classes, "rows": len(table),
            "test_rows": len(test), "data_dir": cfg.data.dir}
    meta_text = json.dumps(meta, indent=2)
    out = out.with_name(f"{out.stem}_{pseudo_digest(text.encode(), meta_text.encode())}.csv")
    atomic_write_text(out.with_suffix(".json"), meta_text)
    atomic_write_text(out, text)
    dist = pd.Series([t for lab in table["label"] for t in task.tags(lab)]).value_counts().reindex(
        members[0].classes, fill_value=0)
    print(f"wrote {out}: {len(table)} of {len(test)} test images (confidence >= {threshold:g}, "
          f"{'soft' if soft else 'hard'} targets, round {round_}); train with data.pseudo={out}")
    print(f"pseudo-labels per {task.noun[:-1]}: " + ", ".join(f"{c} {n}" for c, n in dist.items()))
    return out



