"""python -m src.init: a competition folder as Kaggle ships it -> a checked config -> a submission with no
key written by hand.

Each world is built in its real file layout from the digits demo. The end-to-end tests run the real
entry points (init, folds, train, ensemble, score) in-process with the tiny one-epoch settings; the
decision tests check what init wrote and that the traps of the layouts (a tags column, a block of 0/1
columns, a patient column, a probability sample) are never misread."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import (
    COCO_OVERRIDES,
    ONE_HOT_CLASSES,
    TINY,
    build_array_competition,
    build_coco_competition,
    build_grouped_competition,
    build_one_hot_competition,
    build_pixel_competition,
    build_store_competition,
    build_task_competition,
    linked_competition,
)

from src.core.cli import run_cli
from src.core.config import CONFIG_DIR, load_config
from src.core.tasks import TASKS
from src.core.utils import UserError
from src.evaluation.metrics import metric_spec
from src.kaggle.competitions import EVAL, GRADE, KNOWN
from src.kaggle.init_config import HEADER, init_config


def _init(folder: Path, out: Path, *overrides: str, base: str = "demo.yaml", **kw) -> dict:
    path = init_config(folder, name=None, competition=kw.pop("competition", None), metric=kw.pop("metric", None),
                       base=base, out=str(out), guess=kw.pop("guess", False), force=kw.pop("force", False),
                       overrides=list(overrides))
    assert path == out and out.read_text().startswith(HEADER)
    return yaml.safe_load(out.read_text())


def _csv_world(demo_dir: Path, root: Path, name: str, n_train: int = 120, n_test: int = 40) -> tuple[Path, pd.DataFrame,
                                                                                                      pd.DataFrame]:
    """A folder with the demo's image folders linked, and its first train/solution rows as tables."""
    comp = linked_competition(demo_dir, root / name)
    train = pd.read_csv(demo_dir / "train.csv", dtype=str).head(n_train)
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    sol = sol[sol["id"].isin(sorted(sol["id"])[:n_test])]
    return comp, train, sol


# ---------------------------------------------------------------- the known competitions


def test_every_known_competition_names_a_metric_and_its_source():
    assert len(KNOWN) >= 30
    for slug, entry in KNOWN.items():
        metric_spec(entry.metric)  # a name the metric registry scores (else a UserError)
        assert entry.source in (EVAL.format(slug), GRADE.format(slug)) or entry.source.startswith("src/demo.py"), slug
        task = entry.keys.get("data.task", "regression" if "data.target_range" in entry.keys else "multiclass")
        load_config(CONFIG_DIR / "base.yaml", [f"{k}={v}" for k, v in entry.keys.items()]
                    + [f"data.task={task}", f"loss.name={TASKS[task].first_loss}", f"metric.name={entry.metric}"])


# ---------------------------------------------------------------- the demo competitions


DEMOS = {  # folder name -> (its hand-written config, how to build a small one)
    "digits": ("demo.yaml", lambda out: __import__("src.demo").demo.build_demo(out, 200)),
    "digits_topk": ("demo_topk.yaml", lambda out: __import__("src.demo").demo.build_topk_demo(out, 200)),
    "digits_multilabel": ("demo_multilabel.yaml", lambda out: __import__("src.demo").demo.build_multilabel_demo(out, 160, 40)),
    "digits_ordinal": ("demo_ordinal.yaml", lambda out: __import__("src.demo").demo.build_ordinal_demo(out, 160, 40)),
    "digits_regression": ("demo_regression.yaml",
                          lambda out: __import__("src.demo").demo.build_regression_demo(out, 160, 40)),
}


@pytest.mark.parametrize("name", list(DEMOS))
def test_init_on_a_demo_reads_what_its_hand_written_config_says(name, tmp_path):
    """The data section, the metric and the submission format resolve as in configs/<demo>.yaml;
    the recipe's own choices (epochs, TTA views, an ordinal's regression head) are the recipe's."""
    config, build = DEMOS[name]
    folder = build(tmp_path / "inputs" / name)
    written = tmp_path / "configs" / f"{name}.yaml"
    _init(folder, written)
    mine = load_config(written)
    theirs = load_config(CONFIG_DIR / config, [f"data.dir={folder.as_posix()}"])
    assert mine.data == theirs.data
    assert mine.metric == theirs.metric
    assert mine.ensemble.format == theirs.ensemble.format


# ---------------------------------------------------------------- end to end: init, folds, train, ensemble, score


def _run_all(config: Path, out: Path, tmp_path: Path, solution: Path) -> str:
    from src import ensemble, folds, score, train

    common = [f"experiment.output_dir={out}", "wandb.mode=disabled", *TINY]
    run_cli(folds.main, ["--config", str(config), *common])
    run_cli(train.main, ["--config", str(config), "--fold", "all", *common])
    sub = tmp_path / "sub.csv"
    run_cli(ensemble.main, ["--config", str(config), "--out", str(sub), "--tta", "identity", *common])
    run_cli(score.main, [str(sub), "--solution", str(solution), "--config", str(config), *common])
    return sub


def _imagefolder(demo_dir: Path, root: Path) -> Path:
    comp, train, sol = _csv_world(demo_dir, root, "imagefolder_comp")
    os.unlink(comp / "train")
    for i, lab in zip(train["id"], train["label"]):
        (comp / "train" / f"d{lab}").mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_dir / "train" / f"{i}.png", comp / "train" / f"d{lab}" / f"{i}.png")
    sol.assign(label="d" + sol["label"]).to_csv(comp / "solution.csv", index=False)
    sol.assign(label="d0").to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _filename(demo_dir: Path, root: Path) -> Path:
    comp, train, sol = _csv_world(demo_dir, root, "dogs_vs_cats_like")
    train = train[train["label"].isin(["0", "1"])]
    os.unlink(comp / "train")
    (comp / "train").mkdir()
    for n, (i, lab) in enumerate(zip(train["id"], train["label"])):
        shutil.copy(demo_dir / "train" / f"{i}.png", comp / "train" / f"{'cat' if lab == '0' else 'dog'}.{n}.png")
    sol = sol[sol["label"].isin(["0", "1"])]
    sol.assign(label=sol["label"].map({"0": "cat", "1": "dog"})).to_csv(comp / "solution.csv", index=False)
    sol.assign(label=0.5).to_csv(comp / "sample_submission.csv", index=False)
    return comp


RANZCR_COLUMNS = ("ETT - Odd", "NGT - Large", "Swan Ganz Catheter Zero")  # RANZCR's names hold spaces


def _label_columns(demo_dir: Path, root: Path) -> Path:
    """RANZCR CLiP's layout: StudyInstanceUID, one 0/1 column per label (names with spaces), PatientID
    (several studies each), a train_annotations.csv beside train.csv; here the digit's parity, size and zero."""
    comp, train, sol = _csv_world(demo_dir, root, "ranzcr-clip-catheter-line-classification")
    def cols(t: pd.DataFrame) -> pd.DataFrame:
        d = t["label"].astype(int)
        return pd.DataFrame({"StudyInstanceUID": t["id"], RANZCR_COLUMNS[0]: d % 2,
                             RANZCR_COLUMNS[1]: (d >= 5).astype(int), RANZCR_COLUMNS[2]: (d == 0).astype(int)})
    cols(train).assign(PatientID=[f"p{i // 3:03d}" for i in range(len(train))]).to_csv(comp / "train.csv", index=False)
    pd.DataFrame({"StudyInstanceUID": train["id"].head(5), "label": "ETT - Odd", "data": "[[1, 2], [3, 4]]"}).to_csv(
        comp / "train_annotations.csv", index=False)
    cols(sol).to_csv(comp / "solution.csv", index=False)  # the solution in the sample's 0/1 columns, as src.score reads it
    cols(sol).assign(**dict.fromkeys(RANZCR_COLUMNS, 0)).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _binary_patients(demo_dir: Path, root: Path) -> Path:
    """SIIM-ISIC-like: image_name, patient_id (several images each), target 0/1; sample target 0."""
    comp, train, sol = _csv_world(demo_dir, root, "siim_like", n_train=200)
    t = pd.DataFrame({"image_name": train["id"], "patient_id": [f"IP_{i // 4:04d}" for i in range(len(train))],
                      "target": (train["label"].astype(int) >= 5).astype(int)})
    t.to_csv(comp / "train.csv", index=False)
    s = pd.DataFrame({"image_name": sol["id"], "target": (sol["label"].astype(int) >= 5).astype(int)})
    s.to_csv(comp / "solution.csv", index=False)
    s.assign(target=0).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _csv(demo_dir: Path, root: Path) -> Path:
    comp, train, sol = _csv_world(demo_dir, root, "cassava-leaf-disease-classification")
    train.rename(columns={"id": "image_id"}).to_csv(comp / "train.csv", index=False)
    sol.rename(columns={"id": "image_id"}).to_csv(comp / "solution.csv", index=False)
    sol.rename(columns={"id": "image_id"}).assign(label=4).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _coco(demo_dir: Path, root: Path) -> Path:
    return build_coco_competition("inat", root, demo_dir)


def _coco_herbarium(demo_dir: Path, root: Path) -> Path:
    return build_coco_competition("herbarium", root, demo_dir)


def _dicom(demo_dir: Path, root: Path) -> Path:
    """SIIM-ISIC's DICOM layout: train/<image_name>.dcm (16-bit), train.csv with patient_id and metadata
    beside test.csv, the sample's target 0; the folder named by its slug, so its metric is known."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    comp, train, sol = _csv_world(demo_dir, root, "siim-isic-melanoma-classification", n_train=100, n_test=20)
    for split, ids in (("train", train["id"]), ("test", sol["id"])):
        os.unlink(comp / split)
        (comp / split).mkdir()
        for i in ids:
            pixels = np.asarray(Image.open(demo_dir / split / f"{i}.png").convert("L"), dtype=np.uint16) * 16
            meta = FileMetaDataset()
            meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.7"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.Rows, ds.Columns = pixels.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = pixels.tobytes()
            ds.save_as(comp / split / f"{i}.dcm", enforce_file_format=True)
    target = lambda t: (t["label"].astype(int) >= 5).astype(int)  # noqa: E731
    meta_cols = lambda t: {"sex": ["male", "female"] * (len(t) // 2), "age_approx": 45}  # noqa: E731
    pd.DataFrame({"image_name": train["id"], "patient_id": [f"IP_{i // 3:05d}" for i in range(len(train))],
                  **meta_cols(train), "target": target(train)}).to_csv(comp / "train.csv", index=False)
    pd.DataFrame({"image_name": sol["id"], "patient_id": "IP_9", **meta_cols(sol)}).to_csv(comp / "test.csv",
                                                                                          index=False)
    pd.DataFrame({"image_name": sol["id"], "target": target(sol)}).to_csv(comp / "solution.csv", index=False)
    pd.DataFrame({"image_name": sol["id"], "target": 0}).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _demo_as(slug: str, builder: str, *sizes: int):
    """A demo competition built under a real competition's slug, so its metric and quirks are known."""
    def build(demo_dir: Path, root: Path) -> Path:
        import src.demo

        return getattr(src.demo, builder)(root / slug, *sizes)
    return build


def _grouped(demo_dir: Path, root: Path) -> Path:
    """RSNA mammography's layout: images per row of train.csv and test.csv with patient_id and laterality,
    the sample answering prediction_id = {patient_id}_{laterality}."""
    binary, _, _ = build_task_competition("binary", root / "source", demo_dir)
    return build_grouped_competition(binary, root / "rsna-breast-cancer-detection")


def _pixels(demo_dir: Path, root: Path) -> Path:
    """Digit Recognizer: train.csv label,pixel0..pixel63 with no id, test.csv the pixels alone, the sample's
    ImageId the 1-based test row and its column Label (train.csv's is label)."""
    comp = build_pixel_competition(root / "digit-recognizer", 120, 30)
    pd.read_csv(comp / "train.csv").rename(columns={"Label": "label"}).to_csv(comp / "train.csv", index=False)
    return comp


def _pixel_records(demo_dir: Path, root: Path) -> Path:
    """Statoil's layout: train.json records id, band_1, band_2 (8x8 floats in dB, row-major), inc_angle (a
    number or "na"), is_iceberg; test.json the same without the label; the sample's is_iceberg 0.5."""
    import json

    import numpy as np
    from sklearn.datasets import load_digits

    digits, comp = load_digits(), root / "statoil-iceberg-classifier-challenge"
    comp.mkdir(parents=True)
    rng = np.random.default_rng(0)
    target = (digits.target >= 5).astype(int)

    def record(i: int, label: bool) -> dict:
        band = digits.data[i] * 1.5 - 30
        r = {"id": f"{i:08x}", "band_1": band.round(4).tolist(), "band_2": (band + rng.normal(0, 1, 64)).round(4).tolist(),
             "inc_angle": "na" if i % 7 == 0 else 38.5 + i % 5}
        return r | ({"is_iceberg": int(target[i])} if label else {})

    for name, rows, label in (("train.json", range(120), True), ("test.json", range(120, 160), False)):
        (comp / name).write_text(json.dumps([record(i, label) for i in rows]))
    sol = pd.DataFrame({"id": [f"{i:08x}" for i in range(120, 160)], "is_iceberg": target[120:160]})
    sol.to_csv(comp / "solution.csv", index=False)
    sol.assign(is_iceberg=0.5).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _arrays(demo_dir: Path, root: Path) -> Path:
    """SETI's layout: train/<id[0]>/<id>.npy float16 (6, H, W) and train_labels.csv id,target."""
    comp = build_array_competition(root / "seti-breakthrough-listen", 60, 20)
    (comp / "train.csv").rename(comp / "train_labels.csv")
    return comp


def _tif(demo_dir: Path, root: Path) -> Path:
    """Histopathologic Cancer Detection's layout: train/<id>.tif and test/<id>.tif (TIFF, RGB),
    train_labels.csv id,label (0/1), the sample's label 0; here the digit's size."""
    from PIL import Image

    comp = root / "histopathologic-cancer-detection"
    train = pd.read_csv(demo_dir / "train.csv", dtype=str).head(100)
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str).head(30)
    for folder, t in (("train", train), ("test", sol)):
        (comp / folder).mkdir(parents=True)
        for i in t["id"]:
            Image.open(demo_dir / folder / f"{i}.png").convert("RGB").save(comp / folder / f"{i}.tif")
    size = lambda t: t.assign(label=(t["label"].astype(int) >= 5).astype(int))  # noqa: E731
    size(train).to_csv(comp / "train_labels.csv", index=False)
    size(sol).to_csv(comp / "solution.csv", index=False)
    sol.assign(label=0).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _hdf5(demo_dir: Path, root: Path) -> Path:
    """ISIC 2024's layout: train-image.hdf5 / test-image.hdf5 (JPEG bytes keyed by isic_id), no image
    folder, train-metadata.csv with patient_id and metadata, test-metadata.csv, the sample's target 0.3."""
    comp = build_store_competition(demo_dir, root / "isic-2024-challenge", 90, 30)
    train, sol = (pd.read_csv(comp / n, dtype=str) for n in ("train.csv", "solution.csv"))
    (comp / "train.csv").unlink()
    meta = lambda t: {"age_approx": [40 + 5 * (i % 6) for i in range(len(t))],  # noqa: E731
                      "sex": ["male", "female"] * (len(t) // 2)}
    target = lambda t: (t["target"].astype(int) >= 5).astype(int)  # noqa: E731
    pd.DataFrame({"isic_id": train["isic_id"], "target": target(train),
                  "patient_id": [f"IP_{i // 3:07d}" for i in range(len(train))], **meta(train)}).to_csv(
        comp / "train-metadata.csv", index=False)
    pd.DataFrame({"isic_id": sol["isic_id"], "patient_id": [f"IP_9{i:06d}" for i in range(len(sol))],
                  **meta(sol)}).to_csv(comp / "test-metadata.csv", index=False)
    sol.assign(target=target(sol)).to_csv(comp / "solution.csv", index=False)
    sol.assign(target=0.3).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def _one_hot(demo_dir: Path, root: Path) -> Path:
    """Plant Pathology 2020: one 0/1 column per class, exactly one 1 a row; the sample's columns 0.25."""
    built = build_one_hot_competition(root / "source", demo_dir)
    return built.rename(root / "plant-pathology-2020-fgvc7")


def _new_whale(demo_dir: Path, root: Path) -> Path:
    """Humpback's layout: five ranked ids a row, and new_whale (here the 7s, 8s and 9s) the most common label."""
    import src.demo

    comp = src.demo.build_topk_demo(root / "humpback-whale-identification", 200)
    for name in ("train.csv", "solution.csv"):
        table = pd.read_csv(comp / name, dtype=str)
        table.loc[table["label"].isin(["7", "8", "9"]), "label"] = "new_whale"
        table.to_csv(comp / name, index=False)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    sample.assign(label="new_whale 0 1 2 3").to_csv(comp / "sample_submission.csv", index=False)
    return comp


LAYOUTS = {  # world -> (builder, what init must decide, the solution's file name)
    "csv": (_csv, {"data.id_col": "image_id", "data.task": "multiclass", "metric.name": "accuracy"}),
    "imagefolder": (_imagefolder, {"data.layout": "imagefolder", "data.image_dir": "train"}),
    "filename": (_filename, {"data.layout": "filename", "data.task": "binary", "metric.name": "roc_auc"}),
    "label_columns": (_label_columns, {"data.task": "multilabel", "data.label_cols": list(RANZCR_COLUMNS),
                                       "data.id_col": "StudyInstanceUID", "data.group_col": "PatientID",
                                       "metric.name": "roc_auc"}),
    "binary_patients": (_binary_patients, {"data.task": "binary", "data.group_col": "patient_id",
                                           "data.label_col": "target", "metric.name": "roc_auc"}),
    "coco": (_coco, {k.split("=")[0]: k.split("=")[1] for k in COCO_OVERRIDES["inat"] if "metric" not in k}),
    "coco_herbarium": (_coco_herbarium, {k.split("=")[0]: k.split("=")[1] for k in COCO_OVERRIDES["herbarium"]
                                         if "metric" not in k}),
    "tags": (_demo_as("planet-understanding-the-amazon-from-space", "build_multilabel_demo", 120, 30),
             {"data.task": "multilabel", "metric.name": "f2_samples"}),
    "topk": (_demo_as("humpback-whale-identification", "build_topk_demo", 200),
             {"data.task": "multiclass", "metric.name": "map@5"}),
    "ordinal": (_demo_as("aptos2019-blindness-detection", "build_ordinal_demo", 160, 30),
                {"data.task": "ordinal", "data.label_col": "diagnosis", "metric.name": "qwk"}),
    "regression": (_demo_as("petfinder-pawpularity-score", "build_regression_demo", 120, 30),
                   {"data.task": "regression", "data.target_range": [1, 100], "loss.name": "bce",
                    "metric.name": "rmse"}),
    "grouped": (_grouped, {"data.answer_id": "{patient_id}_{laterality}", "data.answer_col": "prediction_id",
                           "data.id_col": "id", "data.group_col": "patient_id", "data.task": "binary",
                           "metric.name": "pfbeta"}),
    "dicom": (_dicom, {"data.task": "binary", "data.group_col": "patient_id", "data.label_col": "target",
                       "metric.name": "roc_auc"}),
    "pixels": (_pixels, {"data.layout": "pixels", "data.pixel_shape": [8, 8], "data.id_col": "ImageId",
                         "aug.mean": (0.5, 0.5, 0.5),  # integer pixels 0..255: a grayscale photo keeps the recipe's
                         "data.label_col": "label", "data.task": "multiclass", "metric.name": "accuracy"}),
    "pixel_records": (_pixel_records, {"data.layout": "pixels", "data.train_csv": "train.json",
                                       "data.test_csv": "test.json", "data.pixel_cols": ["band_1", "band_2"],
                                       "data.pixel_shape": [8, 8], "data.label_col": "is_iceberg",
                                       "data.task": "binary", "aug.mean": None, "aug.std": None,
                                       "metric.name": "log_loss"}),
    "arrays": (_arrays, {"data.train_csv": "train_labels.csv", "data.image_dir": "train", "data.test_dir": "test",
                         "data.task": "binary", "aug.mean": None, "aug.std": None, "metric.name": "roc_auc"}),
    "tif": (_tif, {"data.train_csv": "train_labels.csv", "data.image_dir": "train", "data.test_dir": "test",
                   "data.task": "binary", "metric.name": "roc_auc"}),
    "hdf5": (_hdf5, {"data.image_store": "train-image.hdf5", "data.test_image_store": "test-image.hdf5",
                     "data.train_csv": "train-metadata.csv", "data.test_csv": "test-metadata.csv",
                     "data.id_col": "isic_id", "data.group_col": "patient_id", "data.task": "binary",
                     "metric.name": "pauc@0.8"}),
    "one_hot": (_one_hot, {"data.label_cols": list(ONE_HOT_CLASSES), "data.task": "multiclass",
                           "metric.name": "roc_auc"}),
    "new_whale": (_new_whale, {"data.task": "multiclass", "ensemble.new_label": "new_whale", "metric.name": "map@5"}),
}


def _flat(d: dict, prefix: str = "") -> dict:
    return {k2: v2 for k, v in d.items() for k2, v2 in
            (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_init_then_the_three_commands_give_a_valid_submission(layout, demo_dir, tmp_path, capsys):
    build, expected = LAYOUTS[layout]
    comp = build(demo_dir, tmp_path / "inputs")
    config = tmp_path / "configs" / f"{layout}.yaml"
    written = _flat(_init(comp, config, "data.n_folds=2"))
    for key, value in expected.items():
        assert written.get(key, load_config(CONFIG_DIR / "demo.yaml").model_dump()[key.split(".")[0]][
            key.split(".")[1]]) == value, (key, written)
    sub = _run_all(config, tmp_path / "outputs", tmp_path, comp / "solution.csv")
    sample = pd.read_csv(next(comp.glob("*sample_submission.csv")), dtype=str)
    got = pd.read_csv(sub, dtype=str)
    assert list(got.columns) == list(sample.columns)
    assert got[sample.columns[0]].tolist() == sample[sample.columns[0]].tolist()
    assert capsys.readouterr().out.strip().splitlines()[-1].split()[0]  # src.score printed its scores


# ---------------------------------------------------------------- the traps


def test_a_tags_column_is_never_read_as_classes(demo_dir, tmp_path):
    from src.demo import build_multilabel_demo

    comp = build_multilabel_demo(tmp_path / "inputs" / "planet_like", 160, 40)
    t = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    t.rename(columns={"label": "tags"}).to_csv(comp / "train.csv", index=False)
    s = pd.read_csv(comp / "sample_submission.csv", dtype=str, keep_default_na=False)
    s.rename(columns={"label": "tags"}).to_csv(comp / "sample_submission.csv", index=False)
    written = _flat(_init(comp, tmp_path / "planet.yaml"))
    assert written["data.task"] == "multilabel" and written["data.label_col"] == "tags"
    assert "space-separated words -> multilabel" in (tmp_path / "planet.yaml").read_text()


def test_a_comma_separated_tags_column_sets_the_separator(demo_dir, tmp_path):
    from src.demo import build_multilabel_demo

    comp = build_multilabel_demo(tmp_path / "inputs" / "commas", 160, 40)
    t = pd.read_csv(comp / "train.csv", dtype=str, keep_default_na=False)
    t.assign(label=t["label"].str.replace(" ", ",")).to_csv(comp / "train.csv", index=False)
    written = _flat(_init(comp, tmp_path / "commas.yaml", metric="f1_samples"))
    assert written["data.task"] == "multilabel" and written["data.label_sep"] == ","


def test_a_block_of_0_1_columns_is_never_ignored(demo_dir, tmp_path):
    written = _flat(_init(_label_columns(demo_dir, tmp_path / "inputs"), tmp_path / "cols.yaml"))
    assert written["data.label_cols"] == list(RANZCR_COLUMNS) and written["data.task"] == "multilabel"


def test_one_hot_columns_are_classes_and_a_row_with_two_ones_makes_them_tags(demo_dir, tmp_path):
    comp = _one_hot(demo_dir, tmp_path / "inputs")
    written = _flat(_init(comp, tmp_path / "one_hot.yaml"))
    assert written["data.task"] == "multiclass" and written["data.label_cols"] == list(ONE_HOT_CLASSES)
    assert "exactly one 1 in each of the" in (tmp_path / "one_hot.yaml").read_text()  # the evidence is written
    t = pd.read_csv(comp / "train.csv", dtype=str)
    t.loc[0, list(ONE_HOT_CLASSES)] = "1"  # one image with every label: no longer one class a row
    t.to_csv(comp / "train.csv", index=False)
    written = _flat(_init(comp, tmp_path / "tags.yaml", "metric.name=roc_auc"))
    assert written["data.task"] == "multilabel"


def test_a_pixel_block_that_is_no_square_asks_for_its_shape(demo_dir, tmp_path):
    comp = _pixels(demo_dir, tmp_path / "inputs")
    for name in ("train.csv", "test.csv"):  # 8x8 digits cut to 5 rows of 8 pixels: 40 values, no square
        t = pd.read_csv(comp / name)
        t.drop(columns=[f"pixel{i}" for i in range(40, 64)]).to_csv(comp / name, index=False)
    with pytest.raises(UserError, match=r"40 pixel values a row, which is no square image; set data.pixel_shape"):
        _init(comp, tmp_path / "no_square.yaml")
    assert not (tmp_path / "no_square.yaml").exists()
    written = _flat(_init(comp, tmp_path / "given.yaml", "data.pixel_shape=[5,8]"))
    assert written["data.pixel_shape"] == [5, 8] and written["data.layout"] == "pixels"


def test_numbered_columns_beside_image_files_are_metadata_not_pixels(demo_dir, tmp_path):
    comp = _csv(demo_dir, tmp_path / "inputs")
    t = pd.read_csv(comp / "train.csv", dtype=str)
    t.assign(**{f"emb{i}": "0.5" for i in range(32)}).to_csv(comp / "train.csv", index=False)
    written = _flat(_init(comp, tmp_path / "emb.yaml"))
    assert written.get("data.layout", "csv") == "csv" and written["data.id_col"] == "image_id"


def test_pixel_rows_whose_sample_ids_are_neither_a_column_nor_row_numbers_stop(demo_dir, tmp_path):
    comp = _pixels(demo_dir, tmp_path / "inputs")
    sample = pd.read_csv(comp / "sample_submission.csv")
    sample.assign(ImageId=sample["ImageId"] + 1000).to_csv(comp / "sample_submission.csv", index=False)
    with pytest.raises(UserError, match=r"ImageId is not a column of the test table, nor their rows numbered 1\.\.30"):
        _init(comp, tmp_path / "pixels.yaml")


def test_new_label_only_where_the_most_common_label_names_the_unseen(demo_dir, tmp_path):
    comp = _demo_as("humpback-whale-identification", "build_topk_demo", 200)(demo_dir, tmp_path / "inputs")
    assert "ensemble.new_label" not in _flat(_init(comp, tmp_path / "plain.yaml"))
    t = pd.read_csv(comp / "train.csv", dtype=str)
    t.loc[t.index[:5], "label"] = "new_whale"  # present, but not the most common label: a class like the others
    t.to_csv(comp / "train.csv", index=False)
    assert "ensemble.new_label" not in _flat(_init(comp, tmp_path / "few.yaml"))


def test_a_patient_column_groups_the_folds_and_a_flag_does_not(demo_dir, tmp_path):
    comp = _binary_patients(demo_dir, tmp_path / "inputs")
    t = pd.read_csv(comp / "train.csv", dtype=str)
    t.assign(Group=(t.index % 2).astype(str)).to_csv(comp / "train.csv", index=False)  # PetFinder's 0/1 flag
    written = _flat(_init(comp, tmp_path / "siim.yaml"))
    assert written["data.group_col"] == "patient_id"
    from src.data.folds import load_or_create_folds

    df, _, _ = load_or_create_folds(load_config(tmp_path / "siim.yaml"), write=False)
    assert (df.groupby("group")["fold"].nunique() == 1).all()  # no patient in two folds


def test_a_probability_sample_is_never_written_as_labels(demo_dir, tmp_path, capsys):
    comp = _filename(demo_dir, tmp_path / "inputs")  # placeholders 0.5 under one column
    _init(comp, tmp_path / "cats.yaml")
    assert "ensemble.format auto -> binary" in capsys.readouterr().out
    comp, train, sol = _csv_world(demo_dir, tmp_path / "inputs", "dog_breed_like")
    train.assign(label="breed" + train["label"]).rename(columns={"label": "breed"}).to_csv(comp / "labels.csv",
                                                                                          index=False)
    cols = {f"breed{d}": 0.1 for d in range(10)}
    pd.DataFrame({"id": sol["id"], **cols}).to_csv(comp / "sample_submission.csv", index=False)
    written = _flat(_init(comp, tmp_path / "dogs.yaml"))
    assert written["data.train_csv"] == "labels.csv" and written["data.label_col"] == "breed"
    assert written["metric.name"] == "log_loss"
    assert "ensemble.format auto -> proba" in capsys.readouterr().out


def test_a_known_competition_sets_its_metric_task_and_range(demo_dir, tmp_path):
    comp, train, sol = _csv_world(demo_dir, tmp_path / "inputs", "aptos2019-blindness-detection", n_train=200)
    grade = (train["label"].astype(int) // 2).astype(str)
    pd.DataFrame({"id_code": train["id"], "diagnosis": grade}).to_csv(comp / "train.csv", index=False)
    pd.DataFrame({"id_code": sol["id"], "diagnosis": 0}).to_csv(comp / "sample_submission.csv", index=False)
    text = (tmp_path / "aptos.yaml")
    written = _flat(_init(comp, text))
    assert written["data.task"] == "ordinal" and written["metric.name"] == "qwk"
    assert GRADE.format("aptos2019-blindness-detection") in text.read_text()


# ---------------------------------------------------------------- ambiguity is a question


def _grades_world(demo_dir: Path, root: Path, extra: bool = False) -> Path:
    comp, train, sol = _csv_world(demo_dir, root, "some_unknown_competition", n_train=200)
    t = pd.DataFrame({"id": train["id"], "score": (train["label"].astype(int) // 2).astype(str)})
    if extra:
        t["severity"] = t["score"]
    t.to_csv(comp / "train.csv", index=False)
    pd.DataFrame({"id": sol["id"], "grade": 0}).to_csv(comp / "sample_submission.csv", index=False)
    return comp


def test_integer_labels_of_an_unknown_competition_are_a_question(demo_dir, tmp_path):
    comp = _grades_world(demo_dir, tmp_path / "inputs")
    with pytest.raises(UserError, match=r"read two ways: .*data\.task=ordinal.* or .*data\.task=multiclass.*set "
                                        r"data\.task=<value>"):
        _init(comp, tmp_path / "q.yaml")
    assert not (tmp_path / "q.yaml").exists() and not list(tmp_path.glob(".q-*"))
    written = _flat(_init(comp, tmp_path / "q.yaml", "data.task=ordinal"))
    assert written["data.task"] == "ordinal" and written["metric.name"] == "qwk"
    assert "given on the command line" in (tmp_path / "q.yaml").read_text()
    written = _flat(_init(comp, tmp_path / "q.yaml", guess=True, force=True))
    assert "--guess: chosen over multiclass" in (tmp_path / "q.yaml").read_text()


def test_two_candidate_label_columns_are_a_question(demo_dir, tmp_path):
    comp = _grades_world(demo_dir, tmp_path / "inputs", extra=True)
    with pytest.raises(UserError, match=r"2 columns that could hold the labels \(score, severity\).*data\.label_col"):
        _init(comp, tmp_path / "two.yaml", "data.task=ordinal")
    written = _flat(_init(comp, tmp_path / "two.yaml", "data.task=ordinal", "data.label_col=severity"))
    assert written["data.label_col"] == "severity"


def test_the_metric_of_an_unknown_competition_is_said_to_be_a_guess(demo_dir, tmp_path):
    comp, train, sol = _csv_world(demo_dir, tmp_path / "inputs", "paddy_like")
    train.assign(label="d" + train["label"]).to_csv(comp / "train.csv", index=False)
    sol.assign(label="d0").to_csv(comp / "sample_submission.csv", index=False)
    text = _init(comp, tmp_path / "c.yaml") and (tmp_path / "c.yaml").read_text()
    assert "GUESSED" in text and "--metric" in text
    written = _flat(_init(comp, tmp_path / "c.yaml", metric="f1_macro", force=True))
    assert written["metric.name"] == "f1_macro"


# ---------------------------------------------------------------- what is refused, writing nothing


def test_an_archive_not_extracted_is_one_sentence(demo_dir, tmp_path):
    comp = _csv(demo_dir, tmp_path / "inputs")
    with zipfile.ZipFile(comp / "extra_images.zip", "w") as z:
        z.writestr("a.png", b"")
    with pytest.raises(UserError, match=r"extra_images\.zip is not extracted; unzip it"):
        _init(comp, tmp_path / "z.yaml")
    assert not (tmp_path / "z.yaml").exists()


def test_a_config_is_replaced_only_with_force_and_a_hand_written_one_never(demo_dir, tmp_path):
    comp = _csv(demo_dir, tmp_path / "inputs")
    out = tmp_path / "c.yaml"
    _init(comp, out)
    with pytest.raises(UserError, match="pass --force to replace it"):
        _init(comp, out)
    _init(comp, out, force=True)
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: base.yaml\n")
    with pytest.raises(UserError, match="was not written by src.init"):
        _init(comp, mine, force=True)
    assert mine.read_text() == "base: base.yaml\n"


def test_a_failing_dry_check_writes_nothing(demo_dir, tmp_path):
    comp = _csv(demo_dir, tmp_path / "inputs")
    t = pd.read_csv(comp / "train.csv", dtype=str)
    t.assign(label=["7"] + ["3"] * (len(t) - 1)).to_csv(comp / "train.csv", index=False)  # one 7: too few for folds
    with pytest.raises(UserError, match="fewer images than the 5 folds"):
        _init(comp, tmp_path / "c.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_ids_that_carry_their_extension_find_their_files(demo_dir, tmp_path, capsys):
    comp, train, sol = _csv_world(demo_dir, tmp_path / "inputs", "cassava-leaf-disease-classification")
    train.assign(id=train["id"] + ".png").to_csv(comp / "train.csv", index=False)
    sol.assign(id=sol["id"] + ".png", label=0).to_csv(comp / "sample_submission.csv", index=False)
    written = _flat(_init(comp, tmp_path / "ext.yaml"))
    assert written["data.dir"] == comp.as_posix() and "data.image_exts" not in written
    assert "training images decode (32x32x3" in capsys.readouterr().out


def test_training_ids_without_an_image_are_one_sentence_with_examples(demo_dir, tmp_path):
    comp, train, sol = _csv_world(demo_dir, tmp_path / "inputs", "cassava-leaf-disease-classification")
    train.assign(id=["lost_1", "lost_2", *train["id"][2:]]).to_csv(comp / "train.csv", index=False)
    sol.assign(label=0).to_csv(comp / "sample_submission.csv", index=False)
    with pytest.raises(UserError, match=r"2 training ids have no image file .*lost_1, lost_2"):
        _init(comp, tmp_path / "lost.yaml")
    assert not (tmp_path / "lost.yaml").exists()


def test_columns_of_both_tables_are_offered_as_metadata(demo_dir, tmp_path, capsys):
    written = _flat(_init(_dicom(demo_dir, tmp_path / "inputs"), tmp_path / "siim.yaml"))
    assert "data.meta_cols" not in written
    assert "share 2 columns (sex, age_approx); data.meta_cols=auto" in capsys.readouterr().out


# ---------------------------------------------------------------- the Kaggle notebooks work from the written config


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["hdf5"])  # the pixel tables: tests/data/test_pixels.py rehearses their notebook
def test_the_offline_notebook_rehearses_an_init_config_unchanged(layout, demo_dir, tmp_path):
    """src.init's config (its base a relative path to the recipe) trains two folds; the code competition's
    bundle built from it and rehearsed on a fake /kaggle writes src.ensemble's submission: the same ids and
    columns, the same values within float32 noise (1e-6). HDF5: the notebook extracts the test store itself."""
    from src import kaggle_kernel
    from src.ensembling import pipeline
    from src.training.trainer import train_fold

    comp = LAYOUTS[layout][0](demo_dir, tmp_path / "inputs")
    config = tmp_path / "configs" / f"{layout}.yaml"
    _init(comp, config, "data.n_folds=2")
    common = ["--config", str(config), f"experiment.output_dir={tmp_path / 'outputs'}", "wandb.mode=disabled", *TINY]
    cfg = load_config(config, common[2:])
    for k in (0, 1):
        train_fold(cfg, k)
    run_cli(kaggle_kernel.main, ["build", *common, "--out", str(tmp_path / "build"), "--experiments", layout,
                                 "--tta", "identity", "--no-wheels", "--dataset", "someone/init-bundle",
                                 "--kernel", "someone/init-inference"])
    run_cli(kaggle_kernel.main, ["rehearse", *common, "--out", str(tmp_path / "build")])
    local = pipeline.run(cfg, [layout], ["identity"], None, "soft", tmp_path / "local.csv", "auto")
    kernel, here = (pd.read_csv(p) for p in (tmp_path / "build" / "rehearsal" / "submission.csv", local))
    assert list(kernel.columns) == list(here.columns) and kernel.iloc[:, 0].tolist() == here.iloc[:, 0].tolist()
    assert ((kernel.iloc[:, 1:] - here.iloc[:, 1:]).abs().to_numpy() <= 1e-6).all()
