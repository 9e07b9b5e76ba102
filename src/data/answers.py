"""Several images per answer (data.answer_id): RSNA mammography answers a breast (`{patient_id}_{laterality}`)
from its views, cdiscount a product from its photos.

Images train as images, each with its own row and label. Everything scored or submitted is an answer:
the image rows of a validation fold, an OOF file or the test set carry an `answer` column, and
`to_answers` (or an `AnswerIndex`) combines their predictions by the task's `aggregate` before any
metric, weight, view or threshold reads them, so no stage needs a branch of its own.
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.config import DataCfg
from src.core.utils import UserError, counted


def answer_fields(answer_id: str) -> list[str]:
    """The columns data.answer_id reads: itself when it is a column name, else its template's fields."""
    if "{" not in answer_id:
        return [answer_id]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(answer_id) if f is not None]
    except ValueError as e:
        raise UserError(f"data.answer_id '{answer_id}' is no template ({e}); write column names in braces, "
                        "e.g. '{patient_id}_{laterality}'") from None
    bad = [f for f in fields if not f or f.isdigit()]  # '{}' and '{0}' are positions, no column
    if bad or not fields:
        raise UserError(f"data.answer_id '{answer_id}' has fields that name no column ({bad or 'none'}); write column "
                        "names in braces, e.g. '{patient_id}_{laterality}'")
    return fields


def answer_ids(raw: pd.DataFrame, cfg: DataCfg, path: Path) -> list[str]:
    """Each row's answer id, from its columns; a column the template names and the table lacks is refused."""
    fields = answer_fields(cfg.answer_id)
    missing = [f for f in fields if f not in raw.columns]
    if missing:
        raise UserError(f"data.answer_id '{cfg.answer_id}' names the column '{missing[0]}', which {path} lacks (its "
                        f"columns are {list(raw.columns)[:12]}); name columns of both train.csv and {cfg.test_csv}")
    if fields == [cfg.answer_id]:
        return raw[cfg.answer_id].astype(str).tolist()
    return [cfg.answer_id.format_map(r) for r in raw[fields].astype(str).to_dict("records")]


def check_answers(df: pd.DataFrame, path: Path) -> None:
    """Every answer's images share one label (the answer's), and one group (data.group_col), or one sentence.

    A disagreement is refused rather than resolved by a maximum: it means the template joins images of
    different answers, or the label is per image and the answer's label is not in the data."""
    labels = df.groupby("answer", sort=False)["label"].nunique()
    if (labels > 1).any():
        a = labels.index[labels > 1][0]
        shown = sorted(set(df.loc[df["answer"] == a, "label"]))[:4]
        raise UserError(f"{path}: the images of answer '{a}' (data.answer_id) hold different labels {shown} "
                        f"({counted(int((labels > 1).sum()), 'such answer')}); an answer has one label, so fix the "
                        "labels or data.answer_id")
    if "group" in df:
        groups = df.groupby("answer", sort=False)["group"].nunique()
        if (groups > 1).any():
            a = groups.index[groups > 1][0]
            shown = sorted(set(df.loc[df["answer"] == a, "group"]))[:4]
            raise UserError(f"{path}: answer '{a}' (data.answer_id) spans the groups {shown} of data.group_col, so "
                            "the folds would split it; make data.answer_id finer than data.group_col, or fix the table")


def refuse_answers(cfg: DataCfg, stage: str, why: str) -> None:
    """One sentence where `stage` cannot serve answers of several images (data.answer_id): `why`."""
    if cfg.answer_id:
        raise UserError(f"{stage} {why}, and data.answer_id='{cfg.answer_id}' makes an answer of several images; "
                        f"run {stage} without data.answer_id")


def split_groups(df: pd.DataFrame) -> pd.Series | None:
    """What the folds keep together: data.group_col's groups, else each answer's images, else nothing."""
    if "group" in df:
        return df["group"]
    return df["answer"] if "answer" in df else None


def test_images(sample: pd.DataFrame, sample_col: str, cfg: DataCfg, root: Path) -> pd.DataFrame:
    """The test images (id, answer) of data.test_csv, grouped by answer in the sample submission's order.

    An answer of the sample without an image stops in one sentence; images whose answer the sample
    does not ask for are left out with a warning (a test table may list more than one stage's images)."""
    path = root / cfg.test_csv
    if not path.is_file():
        raise UserError(f"data.answer_id names answers of several images, and the test images' table {path} does not "
                        "exist; copy the competition's test.csv there or set data.test_csv")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if cfg.id_col not in table.columns:
        raise UserError(f"{path} has no column '{cfg.id_col}' (data.id_col, the image id); its columns are "
                        f"{list(table.columns)[:12]}: set data.id_col")
    table = pd.DataFrame({"id": table[cfg.id_col], "answer": answer_ids(table, cfg, path)})
    wanted = pd.Index(sample[sample_col].astype(str))
    pos = wanted.get_indexer(table["answer"])
    empty = wanted[~wanted.isin(table["answer"])]
    if len(empty):
        raise UserError(f"{counted(len(empty), 'answer')} of the sample submission ({', '.join(empty[:5])}) "
                        f"{'has' if len(empty) == 1 else 'have'} no image in {path}; add their images' rows, or "
                        "fix data.answer_id")
    if (pos < 0).any():
        warnings.warn(f"{counted(int((pos < 0).sum()), 'image')} of {path} answer none of the sample submission's ids "
                      f"(e.g. {table['answer'][pos < 0].iloc[0]}); left out", stacklevel=2)
    table = table.assign(_pos=pos)[pos >= 0]
    return table.sort_values("_pos", kind="stable").drop(columns="_pos").reset_index(drop=True)


@dataclass(frozen=True)
class AnswerIndex:
    """Which answer each image row belongs to: codes (N,) into ids (n,), first-seen order, and each
    answer's first row (its label, fold and group are its images')."""

    codes: np.ndarray
    ids: np.ndarray
    first: np.ndarray
    how: str  # data.aggregate

    @classmethod
    def of(cls, answers, how: str) -> AnswerIndex:
        codes, ids = pd.factorize(pd.Series(list(answers), dtype=str), sort=False)
        first = pd.Series(np.arange(len(codes))).groupby(codes).min().to_numpy()
        return cls(codes, np.asarray(ids, dtype=object), first, how)

    def probs(self, task, probs: np.ndarray) -> np.ndarray:
        """The images' predictions (N, C) as the answers' (n, C)."""
        return task.aggregate(probs, self.codes, len(self.ids), self.how)

    def rows(self, x):
        """Per-image values (an array, or a table) at each answer's first image."""
        return x.iloc[self.first].reset_index(drop=True) if isinstance(x, pd.DataFrame) else np.asarray(x)[self.first]


def answer_index(table: pd.DataFrame, how: str) -> AnswerIndex | None:
    """The answers of a table of image rows, or None when each row is its own answer (no `answer` column)."""
    return AnswerIndex.of(table["answer"], how) if "answer" in table else None


def answer_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per answer (its id as `id`, its first image's other columns), or the table when its rows
    answer themselves."""
    index = answer_index(table, "mean")
    return table if index is None else index.rows(table).assign(id=index.ids).drop(columns="answer")


def to_answers(table: pd.DataFrame, probs: np.ndarray, task, how: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(answer_rows(table), the answers' predictions combined by `how`), or the table and predictions as
    they are when its rows answer themselves."""
    index = answer_index(table, how)
    return (table, probs) if index is None else (answer_rows(table), index.probs(task, probs))
