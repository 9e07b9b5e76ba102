"""Shared fixtures: the digits demo built once per session, configs pointed at it, and torch on
one thread (in the tests' own processes and the ones they start)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# The commands the tests start in other processes (CLI runs, notebook kernels, tuning workers) run
# torch on one thread too, as the test workers do (_one_torch_thread): two workers already fill two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from src.core.config import CONFIG_DIR, Config, load_config  # noqa: E402
from src.demo import build_demo  # noqa: E402

if TYPE_CHECKING:  # pandas loads in the fixtures that need it
    import pandas as pd

REPO = CONFIG_DIR.parent
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
# One epoch of a few batches of timm's tiny ResNet at 32 px: the real loop, in about a second.
TINY = (
    "model.name=test_resnet",
    "aug.img_size=32",
    "train.epochs=1",
    "train.limit_batches=3",
    "loader.batch_size=16",
    "loader.num_workers=0",
    "data.check_images=false",
)

# Every Optuna trial in the tune tests: test_resnet at demo.yaml's 32 px, one epoch of two batches.
TRIAL = (
    "model.name=test_resnet",
    "train.epochs=1",
    "train.limit_batches=2",
    "loader.batch_size=32",
    "loader.num_workers=0",
    "data.check_images=false",
    "data.n_folds=5",
)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tiny test models run faster on one thread, and several times faster when other
    processes share the (2) cores; the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The digits competition, built once per session; tests must not modify it (copy it first)."""
    return build_demo(tmp_path_factory.mktemp("demo") / "digits")


def linked_competition(source: Path, comp: Path) -> Path:
    """A new competition folder `comp` whose train/ and test/ image folders are links to `source`'s:
    a world with other tables over the same images (the tables are the caller's to write)."""
    comp.mkdir(parents=True)
    for name in ("train", "test"):
        os.symlink((source / name).resolve(), comp / name)
    return comp


TASKS = ("multiclass", "binary", "topk", "multilabel", "ordinal")


def build_task_competition(task: str, root: Path, demo_dir: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """(competition folder, its demo config, overrides) of a small competition of `task` under
    `root` (binary: the demo's 0s and 1s; multilabel and ordinal: 160 training and 40 test grids)."""
    import pandas as pd

    from src.demo import build_multilabel_demo, build_ordinal_demo

    if task in ("multiclass", "topk"):
        return demo_dir, CONFIG_DIR / ("demo.yaml" if task == "multiclass" else "demo_topk.yaml"), ()
    if task == "binary":
        comp = linked_competition(demo_dir, root / "digits_binary")
        for name in ("train.csv", "solution.csv"):
            table = pd.read_csv(demo_dir / name, dtype=str)
            table[table["label"].isin(["0", "1"])].to_csv(comp / name, index=False)
        sol = pd.read_csv(comp / "solution.csv", dtype=str)
        pd.DataFrame({"id": sol["id"], "label": 0.5}).to_csv(comp / "sample_submission.csv", index=False)
        return comp, DEMO_CONFIG, ("data.task=binary", "metric.name=roc_auc")
    if task == "multilabel":
        return build_multilabel_demo(root / "digits_multilabel", 160, 40), CONFIG_DIR / "demo_multilabel.yaml", ()
    return build_ordinal_demo(root / "digits_ordinal", 160, 40), CONFIG_DIR / "demo_ordinal.yaml", ()


@pytest.fixture(scope="session")
def task_competition(demo_dir, tmp_path_factory) -> Callable[[str], tuple[Path, Path, tuple[str, ...]]]:
    """task_competition(task) -> (competition folder, its demo config, overrides): the competitions
    of build_task_competition, built once per session."""
    built: dict[str, tuple[Path, Path, tuple[str, ...]]] = {}

    def make(task: str) -> tuple[Path, Path, tuple[str, ...]]:
        if task not in built:
            built[task] = build_task_competition(task, tmp_path_factory.mktemp(task), demo_dir)
        return built[task]

    return make


@pytest.fixture(scope="session")
def overrides_for() -> Callable[..., list[str]]:
    """overrides_for(data_dir, out, *extra): the command-line overrides that point configs/demo.yaml
    at a competition folder and an output folder, with W&B off; `extra` wins."""

    def make(data_dir: Path, out: Path, *extra: str) -> list[str]:
        return [f"data.dir={data_dir}", f"experiment.output_dir={out}", "wandb.mode=disabled", *extra]

    return make


@pytest.fixture(scope="session")
def demo_cfg(overrides_for) -> Callable[..., Config]:
    """demo_cfg(data_dir, out, *extra, config=configs/demo.yaml): a loaded config for tests."""

    def make(data_dir: Path, out: Path, *extra: str, config: Path = DEMO_CONFIG) -> Config:
        return load_config(config, overrides_for(data_dir, out, *extra))

    return make


@pytest.fixture(scope="session")
def tiny_cfg(demo_cfg) -> Callable[..., Config]:
    """tiny_cfg(data_dir, out, *extra): demo_cfg with TINY (one short epoch) applied first."""

    def make(data_dir: Path, out: Path, *extra: str) -> Config:
        return demo_cfg(data_dir, out, *TINY, *extra)

    return make


def start_tune_worker(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m src.tune ARGS` in the background, its output in `log`."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "src.tune", *args], cwd=REPO, stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="session")
def tune_workers() -> Callable[..., list[int]]:
    """tune_workers(args, logs): start one `python -m src.tune` per log together, as a cluster
    launches workers, and wait for all; their exit codes (a worker past 300 s is killed)."""

    def run(args: list[str], logs: list[Path]) -> list[int]:
        procs = [start_tune_worker(args, log) for log in logs]
        try:
            return [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()

    return run


def train_two_members(out: Path, demo_dir: Path, demo_cfg, train: tuple[str, ...]) -> None:
    """Experiments a and b (b with another seed), folds 0 and 1 each, under `out`: the members the
    ensemble tests blend."""
    from src.training.trainer import train_fold

    for name, extra in (("a", ()), ("b", ("experiment.seed=7",))):
        cfg = demo_cfg(demo_dir, out, f"experiment.name={name}", *train, *extra)
        for k in range(2):
            train_fold(cfg, k)


def build_coco_competition(style: str, root: Path, demo_dir: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """A small COCO-style competition from the digits demo, in the layout of `style`:

    inat       iNaturalist 2019: train2019.json, test2019.json (images only) and
               kaggle_sample_submission.csv (id,predicted) at the top, images under
               train_val2019/Digits/<category>/<hash>.jpg and test2019/<hash>.jpg (file_names
               relative to the top); category ids 100 + digit.
    herbarium  Herbarium 2020: nybg2020/train/metadata.json (Latin-1, as the real one) with images
               under images/<cat // 100:03d>/<cat % 100:02d>/<id>.jpg, nybg2020/test/metadata.json
               with images/<idx // 1000:03d>/<idx>.jpg (file_names relative to each JSON's folder),
               sample_submission.csv (Id,Predicted); category ids 15500 + digit, names with accents.

    Both get a solution.csv in the sample's columns for src.score. Returns the competition folder."""
    import hashlib
    import json

    import pandas as pd
    from PIL import Image

    train = pd.read_csv(demo_dir / "train.csv", dtype=str).head(n_train)
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str).head(n_test)
    comp = root / f"coco_{style}"
    base = 100 if style == "inat" else 15500
    categories = [{"id": base + d, "name": f"Digitus {d}" + ("é" if style == "herbarium" else ""),
                   "kingdom": "Digits"} for d in range(10)]

    def save(src_id: str, split: str, rel: str, top: Path) -> None:
        dst = top / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.open(demo_dir / split / f"{src_id}.png").convert("RGB").save(dst, quality=95)

    train_images, annotations, test_images, answers = [], [], [], []
    if style == "inat":
        top = train_top = test_top = comp
        id_col, pred_col, sample_name = "id", "predicted", "kaggle_sample_submission.csv"
    else:
        top, train_top, test_top = comp, comp / "nybg2020" / "train", comp / "nybg2020" / "test"
        id_col, pred_col, sample_name = "Id", "Predicted", "sample_submission.csv"
    for i, (src_id, label) in enumerate(zip(train["id"], train["label"])):
        cat = base + int(label)
        h = hashlib.md5(src_id.encode()).hexdigest()
        rel = (f"train_val2019/Digits/{cat}/{h}.jpg" if style == "inat"
               else f"images/{cat // 100:03d}/{cat % 100:02d}/{1000 + i}.jpg")
        save(src_id, "train", rel, train_top)
        train_images.append({"id": 1000 + i, "file_name": rel, "width": 32, "height": 32})
        annotations.append({"id": 5000 + i, "image_id": 1000 + i, "category_id": cat})
    for i, (src_id, label) in enumerate(zip(sol["id"], sol["label"])):
        h = hashlib.md5(("t" + src_id).encode()).hexdigest()
        image_id = 9000 + i if style == "inat" else i
        rel = f"test2019/{h}.jpg" if style == "inat" else f"images/{i // 1000:03d}/{i}.jpg"
        save(src_id, "test", rel, test_top)
        test_images.append({"id": image_id, "file_name": rel, "width": 32, "height": 32})
        answers.append({id_col: image_id, pred_col: base + int(label)})
    info = {"info": {"year": 2019}, "licenses": []}
    train_doc = {**info, "images": train_images, "annotations": annotations, "categories": categories}
    test_doc = {**info, "images": test_images}
    if style == "inat":
        (comp / "train2019.json").write_text(json.dumps(train_doc, indent=4, sort_keys=True))
        (comp / "test2019.json").write_text(json.dumps(test_doc, indent=4, sort_keys=True))
    else:
        (train_top / "metadata.json").write_bytes(json.dumps(train_doc, ensure_ascii=False).encode("latin-1"))
        (test_top / "metadata.json").write_text(json.dumps(test_doc))
    pd.DataFrame(answers).to_csv(top / "solution.csv", index=False)
    pd.DataFrame(answers).assign(**{pred_col: 0}).to_csv(top / sample_name, index=False)
    return comp


# The config overrides that read each coco style (build_coco_competition).
COCO_OVERRIDES = {
    "inat": ("data.layout=coco", "data.annotations=train2019.json", "data.test_annotations=test2019.json",
             "data.sample_submission=kaggle_sample_submission.csv", "data.label_col=predicted",
             "metric.name=top1_error"),
    "herbarium": ("data.layout=coco", "data.annotations=nybg2020/train/metadata.json",
                  "data.test_annotations=nybg2020/test/metadata.json", "data.id_col=Id", "data.label_col=Predicted",
                  "metric.name=f1_macro"),
}


# ---- issue 29: image + metadata (data.meta_cols)


def add_meta_columns(src: Path, dest: Path, id_col: str = "id", label_col: str = "label", seed: int = 0,
                     shuffle_labels: bool = False) -> Path:
    """A copy of competition `src` at `dest` (images linked) whose train.csv and a new test.csv carry
    metadata: `hint`, a number that is the label's rank among the sorted labels plus a little noise
    (every 7th value missing), and `site`, a category (every 5th empty; the test table adds `palm`,
    which no training row has). `shuffle_labels` permutes the training labels first, so the image
    says nothing about the label and only `hint` does."""
    import numpy as np
    import pandas as pd

    dest.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.is_dir():
            os.symlink(entry, dest / entry.name)
    rng = np.random.default_rng(seed)
    train = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    solution = pd.read_csv(src / "solution.csv", dtype=str, keep_default_na=False)
    if shuffle_labels:
        train[label_col] = rng.permutation(train[label_col].to_numpy())
    ranks = {v: i for i, v in enumerate(sorted(set(train[label_col]) | set(solution[label_col])))}

    def meta(table: pd.DataFrame, sites: list[str]) -> pd.DataFrame:
        hint = [f"{ranks[v] + rng.normal(0, 0.05):.3f}" for v in table[label_col]]
        out = pd.DataFrame({id_col: table[id_col], "hint": hint, "site": rng.choice(sites, len(table))})
        out.loc[out.index % 7 == 3, "hint"] = ""
        out.loc[out.index % 5 == 1, "site"] = ""
        return out

    train_meta = meta(train, ["head", "torso", "leg"])
    train.merge(train_meta, on=id_col).to_csv(dest / "train.csv", index=False)
    meta(solution, ["head", "torso", "leg", "palm"]).to_csv(dest / "test.csv", index=False)
    for name in ("sample_submission.csv", "solution.csv"):
        (dest / name).write_bytes((src / name).read_bytes())
    return dest


@pytest.fixture(scope="session")
def meta_competition(task_competition, tmp_path_factory) -> Callable[[str], tuple[Path, Path, tuple[str, ...]]]:
    """meta_competition(task) -> (folder, config, overrides): task_competition's competition with
    metadata columns (add_meta_columns) and data.meta_cols=auto; `regression` is the PetFinder demo
    (its twelve 0/1 flags in train.csv and test.csv)."""
    from src.demo import build_regression_demo

    built: dict[str, tuple[Path, Path, tuple[str, ...]]] = {}

    def make(task: str) -> tuple[Path, Path, tuple[str, ...]]:
        if task not in built:
            root = tmp_path_factory.mktemp(f"meta_{task}")
            if task == "regression":
                built[task] = (build_regression_demo(root / "comp", n_train=64, n_test=24),
                               CONFIG_DIR / "demo_regression.yaml", ("data.meta_cols=auto",))
            else:
                comp, config, extra = task_competition(task)
                label = "diagnosis" if task == "ordinal" else "label"
                built[task] = (add_meta_columns(comp, root / "comp", label_col=label), config,
                               (*extra, "data.meta_cols=auto"))
        return built[task]

    return make


# ---- issue 29: grouped answers (data.answer_id)
# A grouped world: answers of 1-3 images ('{patient_id}_{laterality}'), a patient holding two answers
# (data.group_col=patient_id); an answer's images share its first image's label.
GROUPED = ("data.answer_id={patient_id}_{laterality}", "data.group_col=patient_id", "data.answer_col=prediction_id")


def _answers_of(table: pd.DataFrame, id_col: str, label_col: str, prefix: str, seed: int):
    """The table's rows as answers of 1-3 images, sorted by label (so an answer's images mostly shared it),
    each image given its answer's first label; with patient_id and laterality columns."""
    import numpy as np

    rng = np.random.default_rng(seed)
    table = table.sort_values(label_col, kind="stable").reset_index(drop=True)
    sizes = rng.choice([1, 2, 3], size=len(table), p=[0.2, 0.4, 0.4])
    answer = np.repeat(np.arange(len(table)), sizes)[: len(table)]
    table = table.assign(patient_id=[f"{prefix}{a // 2}" for a in answer], laterality=["LR"[a % 2] for a in answer])
    first = table.groupby(answer)[label_col].transform("first")
    return table.assign(**{label_col: first}), answer


def build_grouped_competition(source: Path, dst: Path, id_col: str = "id", label_col: str = "label",
                              n_train: int = 240, n_test: int = 60) -> Path:
    """dst/: the `source` competition's first n_train training and n_test test images as grouped answers:
    train.csv and test.csv with patient_id and laterality, sample_submission.csv and solution.csv by
    prediction_id (the answers, shuffled), the sample's placeholders kept."""
    import pandas as pd

    linked_competition(source, dst)
    train, _ = _answers_of(pd.read_csv(source / "train.csv", dtype=str, keep_default_na=False).head(n_train),
                           id_col, label_col, "p", 0)
    train.to_csv(dst / "train.csv", index=False)
    sol = pd.read_csv(source / "solution.csv", dtype=str, keep_default_na=False).head(n_test)
    test, _ = _answers_of(sol, id_col, label_col, "t", 1)
    test.drop(columns=[c for c in sol.columns if c != id_col]).to_csv(dst / "test.csv", index=False)
    answers = test.assign(prediction_id=test["patient_id"] + "_" + test["laterality"]).drop_duplicates("prediction_id")
    answers = answers.sample(frac=1.0, random_state=0)
    answers[["prediction_id", label_col]].to_csv(dst / "solution.csv", index=False)
    sample = pd.read_csv(source / "sample_submission.csv", dtype=str, keep_default_na=False)
    placeholders = {c: sample[c].iloc[0] for c in sample.columns if c != id_col}
    answers[["prediction_id"]].assign(**placeholders).to_csv(dst / "sample_submission.csv", index=False)
    return dst


GROUPED_KINDS = ("multiclass", "binary", "topk", "multilabel", "ordinal", "regression")


@pytest.fixture(scope="session")
def grouped_competition(task_competition, tmp_path_factory) -> Callable[[str], tuple[Path, Path, tuple[str, ...]]]:
    """grouped_competition(kind) -> (competition folder, its demo config, overrides with GROUPED): the task
    worlds of task_competition (regression: src.demo's, 160 training and 40 test grids) as grouped answers."""
    built: dict[str, tuple[Path, Path, tuple[str, ...]]] = {}

    def make(kind: str) -> tuple[Path, Path, tuple[str, ...]]:
        if kind not in built:
            root = tmp_path_factory.mktemp(f"grouped_{kind}")
            if kind == "regression":
                from src.demo import build_regression_demo

                source, config, extra, cols = (build_regression_demo(root / "source", 160, 40),
                                               CONFIG_DIR / "demo_regression.yaml", (), ("Id", "Pawpularity"))
            else:
                source, config, extra = task_competition(kind)
                cols = ("id", "diagnosis" if kind == "ordinal" else "label")
            comp = build_grouped_competition(source, root / "grouped", *cols)
            built[kind] = comp, config, (*extra, *GROUPED)
        return built[kind]

    return make


# ---- issue 29: pixel tables, arrays and containers


# Digit Recognizer's layout: train.csv label,pixel0..pixel63 (sklearn's 8x8 digits, 0..16 scaled to
# 0..255), test.csv the pixels alone, sample_submission ImageId (the 1-based test row),Label.
PIXEL_OVERRIDES = ("data.layout=pixels", "data.pixel_shape=[8,8]", "data.id_col=ImageId", "data.label_col=Label")


def build_pixel_competition(root: Path, n_train: int = 160, n_test: int = 40) -> Path:
    """A Digit-Recognizer-style pixel competition under `root` (with solution.csv), deterministic."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.data * 255 / 16).astype(int)
    cols = [f"pixel{i}" for i in range(64)]
    root.mkdir(parents=True, exist_ok=True)
    train = pd.DataFrame(pixels[:n_train], columns=cols)
    train.insert(0, "Label", digits.target[:n_train])
    train.to_csv(root / "train.csv", index=False)
    test = slice(n_train, n_train + n_test)
    pd.DataFrame(pixels[test], columns=cols).to_csv(root / "test.csv", index=False)
    ids = np.arange(1, n_test + 1)
    pd.DataFrame({"ImageId": ids, "Label": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": ids, "Label": digits.target[test]}).to_csv(root / "solution.csv", index=False)
    return root


@pytest.fixture(scope="session")
def pixel_dir(tmp_path_factory) -> Path:
    """The pixel competition, built once per session; tests must not modify it (copy it first)."""
    return build_pixel_competition(tmp_path_factory.mktemp("pixels") / "digits_pixels")


def build_array_competition(root: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """train/<id[0]>/<id>.npy float16 (6, 16, 12) with train.csv id,target (positives brighter in
    channel 2), test/ alike, sample_submission and solution."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        ids = [f"{'ab'[i % 2]}{split[:2]}{i:03d}" for i in range(n)]
        target = np.arange(n) % 2
        for i, y in zip(ids, target):
            arr = rng.normal(0, 1, (6, 16, 12)) * np.arange(1, 7)[:, None, None] + np.arange(6)[:, None, None]
            arr[2] += 3 * y
            (root / split / i[0]).mkdir(parents=True, exist_ok=True)
            np.save(root / split / i[0] / f"{i}.npy", arr.astype(np.float16))
        table = pd.DataFrame({"id": ids, "target": target})
        if split == "train":
            table.to_csv(root / "train.csv", index=False)
        else:
            table.assign(target=0.5).to_csv(root / "sample_submission.csv", index=False)
            table.to_csv(root / "solution.csv", index=False)
    return root


def build_store_competition(demo_dir: Path, root: Path, n_train: int = 60, n_test: int = 20) -> Path:
    """The demo's digits as JPEG bytes (cv2.imencode) in train-image.hdf5 / test-image.hdf5, with
    train-metadata-style train.csv (isic_id, target), sample_submission and solution."""
    import cv2
    import h5py
    import numpy as np
    import pandas as pd

    root.mkdir(parents=True)
    train = pd.read_csv(demo_dir / "train.csv", dtype=str).head(n_train)
    test = pd.read_csv(demo_dir / "solution.csv", dtype=str).head(n_test)
    for name, table, folder in (("train-image.hdf5", train, "train"), ("test-image.hdf5", test, "test")):
        with h5py.File(root / name, "w") as f:
            for i in table["id"]:
                ok, jpg = cv2.imencode(".jpg", cv2.imread(str(demo_dir / folder / f"{i}.png")))
                f.create_dataset(f"ISIC_{i}", data=np.void(jpg.tobytes()))  # as ISIC 2024 stores them
    train.assign(isic_id="ISIC_" + train["id"], target=train["label"])[["isic_id", "target"]].to_csv(
        root / "train.csv", index=False)
    sol = test.assign(isic_id="ISIC_" + test["id"], target=test["label"])[["isic_id", "target"]]
    sol.to_csv(root / "solution.csv", index=False)
    sol.assign(target="0").to_csv(root / "sample_submission.csv", index=False)
    return root


# ---- issue 29: one-hot classes, new_whale, graded subset, regression probe and stacking

# Plant Pathology 2020's one-hot columns, in an order that is not sorted (the class list keeps train.csv's)
ONE_HOT_CLASSES = ("scab", "healthy", "rust", "multiple_diseases")
ONE_HOT_OVERRIDES = ("data.id_col=image_id", "data.label_cols=all", "metric.name=roc_auc")


def build_one_hot_competition(root: Path, demo_dir: Path, classes: tuple[str, ...] = ONE_HOT_CLASSES) -> Path:
    """Plant Pathology 2020's layout from the digits demo's first len(classes) digits: train.csv
    `image_id, <one 0/1 column per class>` (exactly one 1 a row), a sample submission of the same
    columns (0.25 each) and a one-hot solution.csv; images linked from the demo."""
    import pandas as pd

    comp = linked_competition(demo_dir, root / "one_hot")
    for name in ("train.csv", "solution.csv"):
        table = pd.read_csv(demo_dir / name, dtype=str)
        table = table[table["label"].astype(int) < len(classes)].reset_index(drop=True)
        cols = {c: (table["label"].astype(int) == j).astype(int) for j, c in enumerate(classes)}
        pd.DataFrame({"image_id": table["id"], **cols}).to_csv(comp / name, index=False)
    ids = pd.read_csv(comp / "solution.csv", dtype=str)["image_id"]
    pd.DataFrame({"image_id": ids, **{c: 1 / len(classes) for c in classes}}).to_csv(comp / "sample_submission.csv",
                                                                                      index=False)
    return comp


@pytest.fixture(scope="session")
def one_hot_competition(demo_dir, tmp_path_factory) -> Path:
    """build_one_hot_competition's four classes, built once per session; tests must not modify it."""
    return build_one_hot_competition(tmp_path_factory.mktemp("one_hot"), demo_dir)
