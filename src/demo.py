"""Build the embedded demo competition from scikit-learn's bundled handwritten digits.

    python -m src.demo [--out inputs/digits]

1,797 real 8x8 scans of 10 digits, split 80/20 (stratified) into train and test, each saved as a
32x32 grayscale PNG; train.csv (id,label), sample_submission.csv (test ids, placeholder label)
and solution.csv (true test labels, for local scoring only). Deterministic: the same bytes every run.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

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


def build_demo(out: str | Path = "inputs/digits") -> Path:
    """Write the digits competition to `out` and return it."""
    out = Path(out)
    digits = load_digits()
    ids = np.array([f"digit_{i:04d}" for i in range(len(digits.target))])
    tr, te = train_test_split(np.arange(len(ids)), test_size=0.2, stratify=digits.target, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
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


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--out", default="inputs/digits", help="competition folder to write")
    args = parser.parse_intermixed_args(argv)
    out = build_demo(args.out)
    n_train = len(pd.read_csv(out / "train.csv"))
    n_test = len(pd.read_csv(out / "sample_submission.csv"))
    print(f"wrote {out}: {n_train} training and {n_test} test images, 10 classes")


if __name__ == "__main__":
    run_cli(main)
