"""Multi-label names with spaces inside (RANZCR CLiP's `ETT - Abnormal`, `Swan Ganz Catheter Present`):
kept whole through the split file, the targets, training, the OOF file, the submission's columns and
reviewed labels. A multi-label image's labels are one space-separated string internally, where a space
inside a name is SPACE_IN_TAG; these tests read back every row and every column, not one example.

No mocks: the multi-label digits demo rewritten with such names, test_resnet for a few batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.config import CONFIG_DIR, load_config
from src.core.tasks import SPACE_IN_TAG, task_of
from src.core.utils import UserError
from src.data.folds import folds_path, load_or_create_folds
from src.demo import build_multilabel_demo
from src.ensembling.pipeline import run
from src.folds import relabel
from src.runs.layout import experiment_dir, fold_paths, read_oof
from src.training.trainer import train_fold

ML_CONFIG = CONFIG_DIR / "demo_multilabel.yaml"
NAMES = [f"ETT - d{d}" if d < 4 else f"Swan Ganz  d{d}" if d < 7 else f"NGT - Borderline d{d}" for d in range(10)]


@pytest.fixture(scope="module")
def spaced(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The multi-label demo as StudyInstanceUID and one 0/1 column per digit named with spaces (two
    in a row in some), a sample submission of those columns; (folder, training table)."""
    src = build_multilabel_demo(tmp_path_factory.mktemp("ml") / "digits_multilabel", 160, 40)
    comp = tmp_path_factory.mktemp("spaced") / "ranzcr_like"
    comp.mkdir()
    for name in ("train", "test"):
        (comp / name).symlink_to(src / name)
    raw = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    tags = raw["label"].str.split()
    table = pd.DataFrame({"id": raw["id"], **{n: tags.map(lambda t, d=d: int(str(d) in t)) for d, n in enumerate(NAMES)}})
    table.to_csv(comp / "train.csv", index=False)
    ids = pd.read_csv(src / "sample_submission.csv", dtype=str)["id"]
    pd.DataFrame({"id": ids, **dict.fromkeys(NAMES, 0)}).to_csv(comp / "sample_submission.csv", index=False)
    return comp, table


def _cfg(comp: Path, out: Path, *extra: str):
    return load_config(ML_CONFIG, [f"data.dir={comp}", f"experiment.output_dir={out}", "wandb.mode=disabled",
                                   "data.label_cols=all", "data.n_folds=2", *extra])


def _matrix(labels, classes, cfg) -> np.ndarray:
    return task_of(cfg, classes).targets(labels)


def test_names_with_spaces_are_the_classes_and_every_row_keeps_its_columns(spaced, tmp_path):
    comp, table = spaced
    cfg = _cfg(comp, tmp_path / "out")
    df, classes, path = load_or_create_folds(cfg)
    assert sorted(classes) == sorted(NAMES) and len(classes) == 10
    truth = table.set_index("id").loc[df["id"], classes].to_numpy()
    assert truth.sum() > 100 and (_matrix(df["label"], classes, cfg) == truth).all()  # every image, every label
    again, classes2, _ = load_or_create_folds(cfg)  # read back from the split file
    assert classes2 == classes and (_matrix(again["label"], classes, cfg) == truth).all()
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert saved["label"].str.contains(SPACE_IN_TAG).any() and not saved["label"].str.contains("  ").any()


def test_training_the_oof_file_and_the_submission_keep_the_names(spaced, tmp_path):
    comp, table = spaced
    cfg = _cfg(comp, tmp_path / "out", "model.name=test_resnet", "train.epochs=1", "train.limit_batches=2",
               "loader.num_workers=0", "data.check_images=false")
    classes = train_fold(cfg, 0)["classes"]
    train_fold(cfg, 1)
    assert sorted(classes) == sorted(NAMES)
    oof = pd.concat([read_oof(fold_paths(experiment_dir(tmp_path / "out", cfg.experiment.name), k).oof, classes) for k in range(2)])
    truth = table.set_index("id").loc[oof["id"], classes].to_numpy()
    assert len(oof) == len(table) and (_matrix(oof["label"], classes, cfg) == truth).all()
    assert [c for c in oof.columns if c.startswith("prob_")] == [f"prob_{c}" for c in classes]
    sub = pd.read_csv(run(cfg, out=tmp_path / "sub.csv"))
    assert list(sub.columns) == ["id", *NAMES]  # the sample's columns, spaces and all, in its order
    probs = sub[NAMES].to_numpy()
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_a_reviewed_label_of_several_spaced_names_reaches_the_split(spaced, tmp_path):
    comp, table = spaced
    cfg = _cfg(comp, tmp_path / "out")
    df, classes, _ = load_or_create_folds(cfg)
    before = _matrix(df["label"], classes, cfg)
    row = int(np.flatnonzero(before.sum(1) == 1)[0])
    new = [NAMES[9], NAMES[0]]  # written as suspect_labels.csv shows labels, in another order
    reviewed = tmp_path / "reviewed.csv"
    pd.DataFrame({"id": [df["id"][row]], "reviewed_label": [" ".join(n.replace(" ", SPACE_IN_TAG) for n in new)]}
                 ).to_csv(reviewed, index=False)
    cfg2 = relabel(cfg, reviewed)
    after, classes2, path = load_or_create_folds(cfg2)
    assert classes2 == classes and path != folds_path(cfg)
    got = _matrix(after.set_index("id").loc[df["id"], "label"], classes, cfg)
    want = before.copy()
    want[row] = [float(c in new) for c in classes]
    assert (got == want).all()  # that row changed to exactly the two names, every other row kept


def test_a_tags_column_split_by_commas_keeps_spaces_inside_its_tags(tmp_path):
    comp = build_multilabel_demo(tmp_path / "nih_like", 160, 40)
    train = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    spelled = train["label"].str.split().map(lambda ts: ",".join(f"Pleural Thickening {t}" for t in ts))
    spelled.pipe(lambda s: train.assign(label=s)).to_csv(comp / "train.csv", index=False)
    cfg = load_config(ML_CONFIG, [f"data.dir={comp}", f"experiment.output_dir={tmp_path / 'out'}",
                                  "wandb.mode=disabled", "data.label_sep=,"])
    df, classes, _ = load_or_create_folds(cfg)
    assert set(classes) == {f"Pleural Thickening {d}" for d in range(10)}
    want = np.array([[float(c in s.split(",")) for c in classes] for s in df["id"].map(dict(zip(train["id"], spelled)))])
    assert (_matrix(df["label"], classes, cfg) == want).all()
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)  # one tags column
    for fmt in ("auto", "tags"):  # before anything is predicted: said where the format is resolved
        with pytest.raises(UserError, match=r"hold spaces, which a space-separated tags submission cannot tell "
                                            r"apart; set ensemble\.format=proba"):
            task_of(cfg, classes).resolve_format(fmt, sample, "id", cfg.metric.name)


def test_a_name_holding_the_kept_spaces_character_is_refused_unwritten(spaced, tmp_path):
    comp, table = spaced
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("train", "test"):
        (odd / name).symlink_to((comp / name).resolve())
    table.rename(columns={NAMES[0]: f"ETT{SPACE_IN_TAG}d0"}).to_csv(odd / "train.csv", index=False)
    pd.read_csv(comp / "sample_submission.csv").rename(columns={NAMES[0]: f"ETT{SPACE_IN_TAG}d0"}).to_csv(
        odd / "sample_submission.csv", index=False)
    cfg = _cfg(odd, tmp_path / "out")
    with pytest.raises(UserError, match=f"label columns .* hold '{SPACE_IN_TAG}', which labels with spaces are kept "
                                        "with; rename them"):
        load_or_create_folds(cfg)
    assert not folds_path(cfg).exists()
