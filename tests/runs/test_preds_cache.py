"""src.ensemble predicts each member's folds x views once, into outputs/<member>/preds/, then
blends from those files: a re-blend builds no model and writes the same submission."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import src.runs.members
from src import ensemble
from src.core.cli import run_cli
from src.ensembling import pipeline
from src.runs.layout import fold_paths
from src.training.trainer import train_fold

VIEWS = ["identity", "hflip", "zoom1.1"]


@pytest.fixture(scope="module")
def trained(demo_dir, tiny_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    for name, seed in (("a", 1), ("b", 2)):
        cfg = tiny_cfg(demo_dir, out, "data.n_folds=2", f"experiment.name={name}", f"experiment.seed={seed}")
        for k in (0, 1):
            train_fold(cfg, k)
    return out


@pytest.fixture
def outputs(trained, tmp_path) -> Path:
    """A fresh copy of the trained members, with no cached predictions."""
    return shutil.copytree(trained, tmp_path / "outputs")


def _cfg(demo_cfg, demo_dir, out, *extra):
    return demo_cfg(demo_dir, out, "data.n_folds=2", "loader.num_workers=0", *extra)


def _no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built although every prediction was cached")

    monkeypatch.setattr(src.runs.members, "build_model", refuse)


def test_reblend_from_cache_writes_the_same_submission_without_a_model(demo_cfg, demo_dir, outputs, tmp_path,
                                                                        monkeypatch, capsys):
    cfg = _cfg(demo_cfg, demo_dir, outputs)
    fresh = pipeline.run(cfg, ["a", "b"], VIEWS, "equal", "soft", tmp_path / "fresh.csv")
    assert "24 computed, 0 read" in capsys.readouterr().out  # 2 members x 2 folds x 3 views x (test + OOF)
    cached = sorted(p.relative_to(outputs) for p in outputs.glob("*/preds/fold*/*.npy"))
    assert len(cached) == 24
    _no_models(monkeypatch)
    again = pipeline.run(cfg, ["a", "b"], VIEWS, "equal", "soft", tmp_path / "again.csv")
    assert "0 computed, 24 read" in capsys.readouterr().out
    assert again.read_bytes() == fresh.read_bytes()
    assert (tmp_path / "again_probs.csv").read_bytes() == (tmp_path / "fresh_probs.csv").read_bytes()
    # Other weights, voting and formats reuse the same files.
    for weights, voting, fmt in (("auto", "soft", None), ([2.0, 1.0], "geometric", "index"), ("equal", "hard", None)):
        pipeline.run(cfg, ["a", "b"], VIEWS, weights, voting, tmp_path / f"{voting}.csv", fmt)
        assert "0 computed, 24 read" in capsys.readouterr().out


def test_cached_logits_are_the_models_logits(demo_cfg, demo_dir, outputs, tmp_path):
    """The blend from cache equals the blend with the cache deleted (recomputed from the models)."""
    cfg = _cfg(demo_cfg, demo_dir, outputs)
    first = pipeline.run(cfg, ["a"], ["identity", "vflip"], "equal", "logits", tmp_path / "one.csv")
    probs_first = np.loadtxt(tmp_path / "one_probs.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
    shutil.rmtree(outputs / "a" / "preds")
    pipeline.run(cfg, ["a"], ["identity", "vflip"], "equal", "logits", tmp_path / "two.csv")
    probs_second = np.loadtxt(tmp_path / "two_probs.csv", delimiter=",", skiprows=1, usecols=range(1, 11))
    np.testing.assert_array_equal(probs_first, probs_second)
    assert first.read_bytes() == (tmp_path / "two.csv").read_bytes()


def test_a_retrained_fold_is_predicted_again(demo_cfg, tiny_cfg, demo_dir, outputs, tmp_path, capsys):
    cfg = _cfg(demo_cfg, demo_dir, outputs)
    pipeline.run(cfg, ["a"], ["identity"], "equal", "soft", tmp_path / "before.csv")
    capsys.readouterr()
    # Same settings, a new run: a new run id, so new checkpoint bytes.
    train_fold(tiny_cfg(demo_dir, outputs, "data.n_folds=2", "experiment.name=a", "experiment.seed=1"), 1, force=True)
    pipeline.run(cfg, ["a"], ["identity", "hflip"], "equal", "soft", tmp_path / "after.csv")
    # The identity-only run cached test-identity of both folds (its OOF came from oof.csv). Now
    # fold 0 reads test-identity and predicts test-hflip, oof-identity, oof-hflip; fold 1 has a
    # new best.pt, so all four of its predictions are new.
    assert "7 computed, 1 read" in capsys.readouterr().out
    fold1 = sorted(p.name.rsplit("-", 1)[0] for p in (outputs / "a" / "preds" / "fold1").glob("*.npy"))
    assert fold1 == ["oof-hflip", "oof-identity", "test-hflip", "test-identity"]  # stale entries replaced
    assert fold_paths(outputs / "a", 1).done.is_file()


def test_plain_run_uses_the_configured_views_and_no_tta_turns_them_off(demo_dir, overrides_for, outputs, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"), "--experiments", "a",
            *overrides_for(demo_dir, outputs, "data.n_folds=2", "loader.num_workers=0", "ensemble.tta=[identity,hflip]")]
    run_cli(ensemble.main, args)
    out = capsys.readouterr().out
    assert "identity+hflip" in out and "x 2 views" in out
    assert (tmp_path / "submissions" / "a_tta.csv").is_file()
    run_cli(ensemble.main, [*args, "--no-tta"])
    out = capsys.readouterr().out
    assert "identity+hflip" not in out and "x 1 view" in out
    assert (tmp_path / "submissions" / "a.csv").is_file()
    run_cli(ensemble.main, [*args, "--tta", "vflip"])
    assert "x 1 view" in capsys.readouterr().out


def test_a_replaced_test_image_is_predicted_anew_whatever_times_it_keeps(demo_cfg, demo_dir, outputs, tmp_path,
                                                                          capsys):
    """Another test image's file of the same byte size over digit A, its modification time restored
    (touch -r): neither cache serves A's old prediction; A now scores exactly as that image does."""
    import os

    comp = shutil.copytree(demo_dir, tmp_path / "comp" / demo_dir.name)
    by_size: dict[int, list[Path]] = {}
    for p in sorted((comp / "test").glob("*.png")):
        by_size.setdefault(p.stat().st_size, []).append(p)
    a, b = next(v for v in by_size.values() if len(v) >= 2)[:2]
    cfg = _cfg(demo_cfg, comp, outputs, "data.cache=true")
    out = pipeline.run(cfg, ["a"], ["identity"], "equal", "soft", tmp_path / "before.csv")
    capsys.readouterr()
    probs = lambda path: np.loadtxt(path.with_name(path.stem + "_probs.csv"), delimiter=",", skiprows=1,  # noqa: E731
                                    usecols=range(1, 11), dtype=np.float64)
    names = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    ia, ib = names.index(a.stem), names.index(b.stem)
    before = probs(out)
    assert not np.allclose(before[ia], before[ib])
    times = a.stat()
    a.write_bytes(b.read_bytes())
    os.utime(a, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (times.st_size, times.st_mtime_ns)
    after = probs(pipeline.run(cfg, ["a"], ["identity"], "equal", "soft", tmp_path / "after.csv"))
    assert "2 computed" in capsys.readouterr().out  # the test split of both folds again; the OOF split is cached
    np.testing.assert_allclose(after[ia], after[ib], atol=1e-7)
    np.testing.assert_allclose(np.delete(after, ia, 0), np.delete(before, ia, 0), atol=1e-7)
