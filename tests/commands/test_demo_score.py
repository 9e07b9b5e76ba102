"""The embedded digits competition and local scoring (in process and through the CLIs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.core.config import load_config
from src.core.tasks import make_task
from src.core.utils import UserError
from src.demo import build_demo
from src.demo import main as demo_main
from src.ensembling.submission import resolve_top_k
from src.evaluation.scoring import score_submission

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- build_demo


def test_build_demo_is_byte_identical(demo_dir: Path, tmp_path: Path):
    other = build_demo(tmp_path / "again" / "digits")
    a, b = _tree(demo_dir), _tree(other)
    assert len(a) == 1437 + 360 + 3
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert not differing, differing[:5]


def test_build_demo_rebuild_in_place_changes_nothing(tmp_path: Path):
    out = build_demo(tmp_path / "digits")
    before = _tree(out)
    (out / "train" / "digit_0000.png").write_bytes(b"damaged")
    build_demo(out)
    assert _tree(out) == before  # a damaged file is rewritten, the rest kept
    assert not [p for p in out.rglob("*.tmp")]


def test_demo_contents(demo_dir: Path):
    train = pd.read_csv(demo_dir / "train.csv", dtype=str)
    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str)
    solution = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    assert train.columns.tolist() == ["id", "label"]
    assert sample.columns.tolist() == ["id", "label"] and solution.columns.tolist() == ["id", "label"]
    assert len(train) == 1437 and len(sample) == 360 and len(solution) == 360
    assert sorted(train["label"].unique()) == [str(i) for i in range(10)]
    assert sorted(solution["label"].unique()) == [str(i) for i in range(10)]
    assert set(sample["label"]) == {"0"}
    assert sample["id"].tolist() == solution["id"].tolist()
    assert not set(train["id"]) & set(sample["id"])
    assert len(set(train["id"]) | set(sample["id"])) == 1797
    assert sorted(p.stem for p in (demo_dir / "train").iterdir()) == sorted(train["id"])
    assert sorted(p.stem for p in (demo_dir / "test").iterdir()) == sorted(sample["id"])
    # the 80/20 split is stratified
    tr, te = train["label"].value_counts(), solution["label"].value_counts()
    assert ((tr / len(train) - te / len(solution)).abs() < 0.01).all()
    with Image.open(demo_dir / "train" / f"{train['id'][0]}.png") as im:
        assert im.mode == "L" and im.size == (32, 32)
        assert np.asarray(im).max() > 100  # a real digit, not a blank


def test_demo_cli(tmp_path: Path):
    out = tmp_path / "cli_digits"
    r = subprocess.run(
        [sys.executable, "-m", "src.demo", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}: 1437 training and 360 test images, 10 classes"


# ---------------------------------------------------------------- score_submission


def test_solution_scores_itself_perfectly(demo_dir: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_dir, tmp_path / "out")
    scores = score_submission(demo_dir / "solution.csv", demo_dir / "solution.csv", cfg)
    assert scores == {"accuracy": 1.0}


def test_label_submission_with_wrong_labels(demo_dir: Path, tmp_path: Path, demo_cfg):
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    sub = sol.copy()
    wrong = [0, 5, 17, 100, 359]
    sub.loc[wrong, "label"] = [str((int(v) + 3) % 10) for v in sub.loc[wrong, "label"]]
    sub = sub.iloc[::-1]  # row order does not matter, ids do
    path = tmp_path / "sub.csv"
    sub.to_csv(path, index=False)
    scores = score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))
    assert scores["accuracy"] == pytest.approx(355 / 360, abs=1e-12)


def test_secondary_metric_is_reported(demo_dir: Path, tmp_path: Path, demo_cfg):
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    sub = sol.copy()
    sub.loc[:9, "label"] = "0"
    path = tmp_path / "sub.csv"
    sub.to_csv(path, index=False)
    scores = score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out", "metric.name=f1_macro"))
    assert set(scores) == {"accuracy", "f1_macro"}
    n_wrong = int((sol.loc[:9, "label"] != "0").sum())
    assert scores["accuracy"] == pytest.approx((360 - n_wrong) / 360)
    assert 0 < scores["f1_macro"] < 1


def test_probability_submission(demo_dir: Path, tmp_path: Path, demo_cfg):
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    y = sol["label"].astype(int).to_numpy()
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 0.05, (len(y), 10))
    pred = y.copy()
    wrong = np.arange(0, 360, 40)  # 9 rows
    pred[wrong] = (y[wrong] + 1) % 10
    probs[np.arange(len(y)), pred] = 0.9
    probs /= probs.sum(1, keepdims=True)
    sub = pd.DataFrame(probs, columns=[str(c) for c in range(10)])
    sub.insert(0, "id", sol["id"])
    path = tmp_path / "probs.csv"
    sub[["id"] + [str(c) for c in (3, 1, 0, 2, 4, 5, 6, 7, 8, 9)]].to_csv(path, index=False)  # column order is free
    cfg = demo_cfg(demo_dir, tmp_path / "out", "metric.name=log_loss")
    scores = score_submission(path, demo_dir / "solution.csv", cfg)
    assert scores["accuracy"] == pytest.approx(351 / 360, abs=1e-12)
    p = probs[np.arange(len(y)), y]
    assert scores["log_loss"] == pytest.approx(float(-np.log(p).mean()), rel=1e-6)


def test_string_classes_and_index_labels(tmp_path: Path, demo_cfg):
    # a competition whose classes are names; a submission may give class indices instead
    sol = pd.DataFrame({"id": [f"t{i}" for i in range(6)], "label": ["emu", "cat", "dog", "cat", "emu", "dog"]})
    sol.to_csv(tmp_path / "solution.csv", index=False)
    cfg = demo_cfg(tmp_path / "nowhere", tmp_path / "out")
    by_name = sol.assign(label=["emu", "cat", "dog", "cat", "emu", "emu"])
    by_name.to_csv(tmp_path / "names.csv", index=False)
    assert score_submission(tmp_path / "names.csv", tmp_path / "solution.csv", cfg)["accuracy"] == pytest.approx(5 / 6)
    by_index = sol.assign(label=["2", "0", "1", "0", "1", "1"])  # classes sorted: cat, dog, emu
    by_index.to_csv(tmp_path / "idx.csv", index=False)
    assert score_submission(tmp_path / "idx.csv", tmp_path / "solution.csv", cfg)["accuracy"] == pytest.approx(5 / 6)


def test_submission_missing_ids(demo_dir: Path, tmp_path: Path, demo_cfg):
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    path = tmp_path / "short.csv"
    sol.drop(index=[4, 8]).to_csv(path, index=False)
    with pytest.raises(UserError) as e:
        score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))
    msg = str(e.value)
    assert "2 solution ids" in msg and sol["id"][4] in msg


def test_submission_with_unknown_labels(demo_dir: Path, tmp_path: Path, demo_cfg):
    sub = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    sub.loc[0, "label"] = "seven"
    path = tmp_path / "bad.csv"
    sub.to_csv(path, index=False)
    with pytest.raises(UserError, match="seven"):
        score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))


def test_submission_without_label_or_class_columns(demo_dir: Path, tmp_path: Path, demo_cfg):
    # Two prediction columns that are not the classes: which one is meant cannot be told.
    sub = pd.read_csv(demo_dir / "solution.csv", dtype=str).rename(columns={"label": "prediction"})
    sub["second"] = sub["prediction"]
    path = tmp_path / "cols.csv"
    sub.to_csv(path, index=False)
    with pytest.raises(UserError, match="neither"):
        score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))


def test_missing_submission_file(demo_dir: Path, tmp_path: Path, demo_cfg):
    with pytest.raises(UserError, match="does not exist"):
        score_submission(tmp_path / "absent.csv", demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))


def test_submission_without_id_column(demo_dir: Path, tmp_path: Path, demo_cfg):
    sub = pd.read_csv(demo_dir / "solution.csv", dtype=str).rename(columns={"id": "image"})
    path = tmp_path / "noid.csv"
    sub.to_csv(path, index=False)
    with pytest.raises(UserError, match="data.id_col"):
        score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))


# ---------------------------------------------------------------- the command lines


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _wrong_three(demo_dir: Path, tmp_path: Path) -> Path:
    sub = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    sub.loc[[1, 2, 3], "label"] = [str((int(v) + 1) % 10) for v in sub.loc[[1, 2, 3], "label"]]
    path = tmp_path / "sub.csv"
    sub.to_csv(path, index=False)
    return path


def test_score_cli(demo_dir: Path, tmp_path: Path, overrides_for):
    path = _wrong_three(demo_dir, tmp_path)
    r = _run(
        "-m",
        "src.score",
        "--config",
        "configs/demo.yaml",
        str(path),
        *overrides_for(demo_dir, tmp_path / "out", "metric.name=f1_macro"),
    )
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith(f"accuracy {357 / 360:.4f}  f1_macro 0."), line
    assert len(line.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_score_cli_overrides_after_config_following_submission(demo_dir: Path, tmp_path: Path, capsys, overrides_for):
    # The order the module docstring shows: python -m src.score SUB.csv --config X section.key=value
    # In process so it costs no interpreter start.
    from src.score import main

    path = _wrong_three(demo_dir, tmp_path)
    try:
        main(
            [
                str(path),
                "--config",
                "configs/demo.yaml",
                *overrides_for(demo_dir, tmp_path / "out"),
            ]
        )
    except SystemExit as e:
        pytest.fail(f"exit {e.code}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert capsys.readouterr().out.strip() == f"accuracy {357 / 360:.4f}"


def test_folds_cli_error_is_one_line(demo_dir: Path, tmp_path: Path, overrides_for):
    out = tmp_path / "out"
    r = _run(
        "-m",
        "src.folds",
        "--config",
        "configs/demo.yaml",
        *overrides_for(demo_dir, out, "data.n_folds=500"),
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "500 folds" in lines[0]
    assert r.stdout == ""
    assert not out.exists()


def test_prediction_column_may_have_any_name(demo_dir: Path, tmp_path: Path, demo_cfg):
    path = _wrong_three(demo_dir, tmp_path)
    sub = pd.read_csv(path, dtype=str).rename(columns={"label": "category"})
    sub.to_csv(path, index=False)
    scores = score_submission(path, demo_dir / "solution.csv", demo_cfg(demo_dir, tmp_path / "out"))
    assert scores["accuracy"] == pytest.approx(357 / 360)


def test_binary_probability_column_is_scored(tmp_path: Path, demo_cfg):
    sol = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": ["cat", "dog", "dog", "cat"]})
    sol.to_csv(tmp_path / "solution.csv", index=False)
    pd.DataFrame({"id": ["a", "b", "c", "d"], "is_dog": [0.1, 0.8, 0.3, 0.2]}).to_csv(tmp_path / "sub.csv", index=False)
    cfg = demo_cfg(tmp_path / "none", tmp_path / "out", "metric.name=roc_auc")
    scores = score_submission(tmp_path / "sub.csv", tmp_path / "solution.csv", cfg)
    assert scores["accuracy"] == pytest.approx(0.75)  # c (0.3) is a dog called a cat
    assert scores["roc_auc"] == pytest.approx(1.0)


def test_the_topk_demo_asks_for_five_ranked_labels(tmp_path):
    demo_main(["--task", "topk", "--out", str(tmp_path / "digits_topk")])
    sample = pd.read_csv(tmp_path / "digits_topk" / "sample_submission.csv", dtype=str)
    assert (sample["label"] == "0 1 2 3 4").all()
    classes = [str(i) for i in range(10)]
    assert make_task("multiclass", classes).resolve_format("auto", sample, "id", "map@5") == "topk"
    assert resolve_top_k(sample, "id", "map@5", None, 10) == 5
    assert load_config(REPO / "configs" / "demo_topk.yaml").metric.name == "map@5"


def _kaggle_apk(actual: str, predicted: list[str], k: int) -> float:
    """Kaggle's (and mle-bench's) average_precision_at_k for one true label, written out here
    independently of the project's scorer."""
    predicted = predicted[:k]
    score, hits = 0.0, 0
    for i, p in enumerate(predicted):
        if p == actual and p not in predicted[:i]:
            hits += 1
            score += hits / (i + 1.0)
    return score


@pytest.mark.parametrize("rows", ["one label", "repeats", "ranked", "too many"])
def test_map_at_5_scores_exactly_the_labels_written(demo_dir, tmp_path, demo_cfg, rows, capsys):
    sol = pd.read_csv(demo_dir / "solution.csv", dtype=str)
    rng = np.random.default_rng(3)
    written = {
        "one label": lambda t: [t if rng.random() < 0.1 else str((int(t) + 1) % 10)],
        "repeats": lambda t: ["1"] * 5,
        "ranked": lambda t: [str(c) for c in rng.permutation(10)[:3]],
        "too many": lambda t: [str(c) for c in rng.permutation(10)[:7]],
    }[rows]
    preds = [written(t) for t in sol["label"]]
    path = tmp_path / "sub.csv"
    pd.DataFrame({"id": sol["id"], "label": [" ".join(p) for p in preds]}).to_csv(path, index=False)
    cfg = demo_cfg(demo_dir, tmp_path / "out", "metric.name=map@5")
    got = score_submission(path, demo_dir / "solution.csv", cfg)["map@5"]
    expected = float(np.mean([_kaggle_apk(t, p, 5) for t, p in zip(sol["label"], preds)]))
    assert got == pytest.approx(expected, abs=1e-12)
    assert ("hold more than 5 labels" in capsys.readouterr().out) == (rows == "too many")
