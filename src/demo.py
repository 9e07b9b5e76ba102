"""Build the embedded demo competitions from scikit-learn's bundled handwritten digits.

    python -m src.demo [--out inputs/digits]
    python -m src.demo --task multilabel [--out inputs/digits_multilabel]
    python -m src.demo --task topk [--out inputs/digits_topk]
    python -m src.demo --task ordinal [--out inputs/digits_ordinal]
    python -m src.demo --task regression [--out inputs/digits_regression]
    python -m src.demo --train-size 160 [--out inputs/digits_160]   # a small competition: 160 training images

1,797 real 8x8 scans of 10 digits, split 80/20 (stratified) into train and test, each saved as a
32x32 grayscale PNG; train.csv (id,label), sample_submission.csv (test ids, placeholder label)
and solution.csv (true test labels, for local scoring only). Deterministic: the same bytes every run.

--train-size N: a small competition of N training images (a stratified subset of the digits'
scans; for the grid tasks, N grids), the same test images: the size of many real competitions'
hardest start, where a recipe that counts epochs takes too few steps.

--task topk: the same images, scored like Happywhale (MAP@5): the sample submission's placeholders
hold five space-separated labels, so a submission holds each image's five most probable digits.

--task multilabel: each 32x32 image is a 2x2 grid of cells, each holding a scan (of the train or
the test split's scans) with probability 0.5, else blank; the label is the set of digits shown,
space-separated like Planet's tags ("" when every cell is blank).

--task ordinal: each 32x32 image is a 2x2 grid of four scans; its grade (0-4, like APTOS's
severity) is how many of them show a digit of 5 or more, so grades are counted findings: the
extremes are rare (1:4:6:4:1) and a grade off by two is worse than one off (quadratic kappa).

--task regression: PetFinder Pawpularity's layout (train/<Id>.jpg, train.csv with Id, the 12 0/1
metadata columns and Pawpularity, test.csv, sample_submission.csv Id,Pawpularity): 2x2 grids of four
scans, Pawpularity 1 + 99 x (their digits' sum / 36) plus noise (sd 4), rounded, in 1-100 (RMSE).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from src.core.cli import command_parser, run_cli
from src.core.utils import atomic_write_text

SIZE = 32


def _png_bytes(img8: np.ndarray) -> bytes:
    # 0..16 intensities -> 0..255, upscaled with bilinear smoothing like a real scan.
    arr = np.round(img8.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    im = Image.fromarray(arr, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def _digits_split():
    """(scikit-learn's digits, their 80/20 stratified train and test indices); imported here, so
    --help imports nothing heavy."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    tr, te = train_test_split(np.arange(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=0)
    return digits, np.sort(tr), np.sort(te)


def build_demo(out: str | Path = "inputs/digits", train_size: int | None = None) -> Path:
    """Write the digits competition to `out` and return it; `train_size`: a stratified subset of
    that many training scans (the test scans unchanged)."""
    out = Path(out)
    digits, tr, te = _digits_split()
    if train_size is not None and train_size < len(tr):
        from sklearn.model_selection import train_test_split

        tr = np.sort(train_test_split(tr, train_size=train_size, stratify=digits.target[tr], random_state=0)[0])
    ids = np.array([f"digit_{i:04d}" for i in range(len(digits.target))])
    for split, idx in (("train", tr), ("test", te)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            p = folder / f"{ids[i]}.png"
            data = _png_bytes(digits.images[i])
            if not p.is_file() or p.read_bytes() != data:
                p.write_bytes(data)
    atomic_write_text(out / "train.csv", pd.DataFrame({"id": ids[tr], "label": digits.target[tr]}).to_csv(index=False))
    atomic_write_text(out / "sample_submission.csv", pd.DataFrame({"id": ids[te], "label": 0}).to_csv(index=False))
    atomic_write_text(out / "solution.csv", pd.DataFrame({"id": ids[te], "label": digits.target[te]}).to_csv(index=False))
    return out


def _grid_png(cells: list[np.ndarray | None]) -> bytes:
    """Four 8x8 scans (or None: blank) as one 2x2 grid, each cell 16x16, the image 32x32."""
    canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
    half = SIZE // 2
    for k, img8 in enumerate(cells):
        if img8 is None:
            continue
        arr = np.round(img8.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
        cell = np.asarray(Image.fromarray(arr, mode="L").resize((half, half), Image.Resampling.BILINEAR))
        r, c = divmod(k, 2)
        canvas[r * half:(r + 1) * half, c * half:(c + 1) * half] = cell
    buf = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def _grid_splits(out: Path, n_train: int, n_test: int, seed: int, prefix: str, draw, label) -> dict[str, pd.DataFrame]:
    """Write 2x2 grids of the train (or test) split's scans under out/train and out/test: `draw(rng,
    pool)` picks four scan indices (None: blank), `label(picks)` names the grid. Returns each split's
    table of (id, label)."""
    digits, pool_tr, pool_te = _digits_split()
    rng = np.random.default_rng(seed)
    tables = {}
    for split, pool, n in (("train", pool_tr, n_train), ("test", pool_te, n_test)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            picks = draw(rng, pool)
            image_id = f"{prefix}_{split}_{i:04d}"
            p, data = folder / f"{image_id}.png", _grid_png([None if j is None else digits.images[j] for j in picks])
            if not p.is_file() or p.read_bytes() != data:
                p.write_bytes(data)
            rows.append((image_id, label([None if j is None else int(digits.target[j]) for j in picks])))
        tables[split] = pd.DataFrame(rows, columns=["id", "label"])
    return tables


def build_multilabel_demo(out: str | Path = "inputs/digits_multilabel", n_train: int = 1400, n_test: int = 400) -> Path:
    """Write the multi-label digits competition (2x2 grids of scans, tags = the digits shown)."""
    out = Path(out)
    tables = _grid_splits(out, n_train, n_test, 0, "grid",
                          lambda rng, pool: [int(rng.choice(pool)) if rng.random() < 0.5 else None for _ in range(4)],
                          lambda shown: " ".join(sorted({str(d) for d in shown if d is not None})))
    atomic_write_text(out / "train.csv", tables["train"].to_csv(index=False))
    atomic_write_text(out / "sample_submission.csv", tables["test"].assign(label="0 1").to_csv(index=False))
    atomic_write_text(out / "solution.csv", tables["test"].to_csv(index=False))
    return out


def build_ordinal_demo(out: str | Path = "inputs/digits_ordinal", n_train: int = 1400, n_test: int = 400) -> Path:
    """Write the ordinal digits competition (2x2 grids of four scans, grade = the scans of 5-9)."""
    out = Path(out)
    tables = _grid_splits(out, n_train, n_test, 1, "grade", lambda rng, pool: [int(rng.choice(pool)) for _ in range(4)],
                          lambda shown: sum(d >= 5 for d in shown))
    tables = {k: t.rename(columns={"label": "diagnosis"}) for k, t in tables.items()}  # APTOS's column name
    atomic_write_text(out / "train.csv", tables["train"].to_csv(index=False))
    atomic_write_text(out / "sample_submission.csv", tables["test"].assign(diagnosis=0).to_csv(index=False))
    atomic_write_text(out / "solution.csv", tables["test"].to_csv(index=False))
    return out


PETFINDER_FLAGS = ("Subject Focus", "Eyes", "Face", "Near", "Action", "Accessory", "Group", "Collage", "Human",
                   "Occlusion", "Info", "Blur")  # PetFinder's 12 metadata columns, 0/1


def build_regression_demo(out: str | Path = "inputs/digits_regression", n_train: int = 1400, n_test: int = 400) -> Path:
    """Write the regression digits competition in PetFinder Pawpularity's layout: 2x2 grids of four
    scans as train/<Id>.jpg and test/<Id>.jpg, Pawpularity = 1 + 99 x (the four digits' sum / 36) plus
    Gaussian noise (sd 4), rounded and clipped to 1-100; train.csv (Id, the 12 flags, Pawpularity),
    test.csv (Id, the flags), sample_submission.csv (Id, Pawpularity) and solution.csv."""
    out = Path(out)
    digits, pool_tr, pool_te = _digits_split()
    pools = {"train": pool_tr, "test": pool_te}
    rng = np.random.default_rng(2)
    tables = {}
    for split, n in (("train", n_train), ("test", n_test)):
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            picks = [int(rng.choice(pools[split])) for _ in range(4)]
            image_id = hashlib.md5(f"{split}{i}".encode()).hexdigest()  # PetFinder's Ids: 32 hex digits
            buf = io.BytesIO()
            Image.open(io.BytesIO(_grid_png([digits.images[j] for j in picks]))).save(buf, format="JPEG", quality=95)
            p = out / split / f"{image_id}.jpg"
            if not p.is_file() or p.read_bytes() != buf.getvalue():
                p.write_bytes(buf.getvalue())
            value = 1 + 99 * sum(int(digits.target[j]) for j in picks) / 36 + rng.normal(0, 4)
            rows.append([image_id, *rng.integers(0, 2, len(PETFINDER_FLAGS)).tolist(), int(np.clip(round(value), 1, 100))])
        tables[split] = pd.DataFrame(rows, columns=["Id", *PETFINDER_FLAGS, "Pawpularity"])
    atomic_write_text(out / "train.csv", tables["train"].to_csv(index=False))
    test = tables["test"]
    atomic_write_text(out / "test.csv", test.drop(columns="Pawpularity").to_csv(index=False))
    atomic_write_text(out / "sample_submission.csv", test[["Id"]].assign(Pawpularity=50).to_csv(index=False))
    atomic_write_text(out / "solution.csv", test[["Id", "Pawpularity"]].to_csv(index=False))
    return out


def build_topk_demo(out: str | Path, train_size: int | None = None) -> Path:
    """The digits with sample-submission placeholders of five ranked labels, as Humpback and
    Happywhale ship them: the submission's format (topk) and MAP@5 follow from them."""
    out = build_demo(out, train_size=train_size)
    sample = pd.read_csv(out / "sample_submission.csv", dtype=str)
    atomic_write_text(out / "sample_submission.csv", sample.assign(label="0 1 2 3 4").to_csv(index=False))
    return out


# --task -> (builder of (folder, training images or None), default folder suffix, what its labels are)
DEMOS = {
    "multiclass": (lambda out, n: build_demo(out, train_size=n), "", "10 classes"),
    "multilabel": (lambda out, n: build_multilabel_demo(out, n_train=n or 1400), "_multilabel", "10 labels"),
    "topk": (build_topk_demo, "_topk", "10 classes"),
    "ordinal": (lambda out, n: build_ordinal_demo(out, n_train=n or 1400), "_ordinal", "grades 0-4"),
    "regression": (lambda out, n: build_regression_demo(out, n_train=n or 1400), "_regression", "Pawpularity 1-100"),
}


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--task", choices=list(DEMOS), default="multiclass",
                        help="multiclass: one digit per image (default); multilabel: 2x2 grids tagged with their "
                             "digits; topk: the digits scored by MAP@5 on five ranked labels; ordinal: 2x2 grids "
                             "graded 0-4 by their digits of 5 or more (QWK); regression: 2x2 grids in PetFinder's layout, "
                             "Pawpularity 1-100 from their digits' sum (RMSE)")
    parser.add_argument("--train-size", type=int, default=None, metavar="N",
                        help="a small competition: N training images, stratified (default: all 1,437 scans, or 1,400 "
                             "grids); the test images are the same")
    parser.add_argument("--out", default=None,
                        help="competition folder (default inputs/digits, or inputs/digits_<task>, then _<N> with --train-size)")
    args = parser.parse_intermixed_args(argv)
    if args.train_size is not None and not 20 <= args.train_size <= 1400:
        parser.error(f"--train-size takes 20 to 1400 training images, not {args.train_size}")
    build, suffix, what = DEMOS[args.task]
    folder = args.out or f"inputs/digits{suffix}" + (f"_{args.train_size}" if args.train_size else "")
    from src.ensembling.write_guard import check_writable  # after parsing: --help imports nothing heavy

    check_writable(Path(folder) / "train.csv", None, "--out", "competition", safe="inputs/", given=folder)
    out = build(folder, args.train_size)
    n_train = len(pd.read_csv(out / "train.csv"))
    n_test = len(pd.read_csv(out / "sample_submission.csv"))
    print(f"wrote {out}: {n_train} training and {n_test} test images, {what}")


if __name__ == "__main__":
    run_cli(main)
