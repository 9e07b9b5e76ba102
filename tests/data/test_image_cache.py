"""The fast path's correctness: the resized-image cache gives the same tensors as decoding, follows
edited files, is shared and safe under concurrent writers; uint8 batches normalised on the device
equal the CPU normalisation; epochs report throughput and loader waits; workers and compile."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cache_writer import fill
from conftest import REPO, TINY
from PIL import Image

from src.core.config import load_config
from src.core.runtime import Norm, Runtime
from src.data.folds import fold_tables
from src.data.image_cache import ImageCache, cache_root, image_cache, transform_side
from src.data.loaders import ImageDataset, make_loader, resolve_workers
from src.data.transforms import build_transform
from src.runs.layout import fold_paths
from src.training.trainer import setup_fold, train_fold


def _photos(folder: Path, n: int = 6) -> list[str]:
    """Small 'photos' of odd, non-square sizes in several formats (JPEG, PNG, grayscale)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 37 + 7 * i, 53 + 5 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 255, (h, w))], 2).astype(np.uint8)
        p = folder / f"img{i}.{'jpg' if i % 2 == 0 else 'png'}"
        (Image.fromarray(img).convert("L") if i == 5 else Image.fromarray(img)).save(p)
        paths.append(str(p))
    return paths


def _aug(*extra: str):
    return load_config(REPO / "configs/demo.yaml", ["aug.img_size=24", *extra]).aug


@pytest.mark.parametrize("crop_pct", [1.0, 0.8])
def test_cache_gives_the_tensors_decoding_gives(tmp_path: Path, crop_pct: float):
    """Evaluation: bit-identical. Training with the same per-sample seed: bit-identical too (the
    transform's first resize of an image already at its side is a no-op)."""
    paths = _photos(tmp_path / "img")
    aug = _aug(f"aug.crop_pct={crop_pct}", "aug.rotate=20", "aug.hflip=true")
    for train in (False, True):
        cache = ImageCache(tmp_path / "cache", transform_side(aug, train))
        plain = ImageDataset(paths, None, build_transform(aug, train))
        cached = ImageDataset(paths, None, build_transform(aug, train), cache)
        for i in range(len(paths)):
            key = (i, 1234 + i) if train else i
            a, b = plain[key][0], cached[key][0]
            assert a.dtype == b.dtype == torch.uint8 and a.shape == (3, 24, 24)
            assert torch.equal(a, b), (train, i)
            assert cache.entry(paths[i]).is_file()
    assert transform_side(aug, False) == round(24 / crop_pct)


def test_cache_follows_an_edited_file(tmp_path: Path):
    paths = _photos(tmp_path / "img", 2)
    cache = ImageCache(tmp_path / "cache", 16)
    before = cache.load(paths[0]).copy()
    old_entry = cache.entry(paths[0])
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(paths[0])  # the same name, new content
    os.utime(paths[0], ns=(os.stat(old_entry).st_mtime_ns + 10**9,) * 2)
    assert cache.entry(paths[0]) != old_entry
    after = cache.load(paths[0])
    assert not np.array_equal(before, after)
    assert np.array_equal(after, np.full((16, 16, 3), 200, np.uint8))
    # A damaged entry (a full disk, a manual edit) is rebuilt, not served.
    cache.entry(paths[1]).parent.mkdir(parents=True, exist_ok=True)
    cache.entry(paths[1]).write_bytes(b"\x93NUMPY garbage")
    np.testing.assert_array_equal(cache.load(paths[1]), ImageCache(tmp_path / "fresh", 16).load(paths[1]))


def test_a_replacement_that_keeps_size_and_times_is_never_served_stale(tmp_path: Path):
    """Another image's bytes of the same size, with the old modification time restored (touch -r):
    the entry follows the content. An entry swapped for another image's entry, or with one pixel
    changed, fails its seal and is built again."""
    paths = _photos(tmp_path / "img", 3)
    a, b = Path(tmp_path / "img" / "a.png"), Path(tmp_path / "img" / "twin.png")
    Image.fromarray(np.full((40, 30, 3), 17, np.uint8)).save(a)
    Image.fromarray(np.full((40, 30, 3), 230, np.uint8)).save(b)
    assert a.stat().st_size == b.stat().st_size  # flat images of one size compress alike
    cache = ImageCache(tmp_path / "cache", 16)
    assert (cache.load(str(a)) == 17).all()
    times = a.stat()
    a.write_bytes(b.read_bytes())
    os.utime(a, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert a.stat().st_size == times.st_size and a.stat().st_mtime_ns == times.st_mtime_ns
    assert (cache.load(str(a)) == 230).all()  # the new content, not the entry of the old
    x, y = paths[1], paths[2]
    truth_x = cache.load(x).copy()
    cache.load(y)
    cache.entry(x).write_bytes(cache.entry(y).read_bytes())  # another image's whole, valid entry
    np.testing.assert_array_equal(cache.load(x), truth_x)
    raw = bytearray(cache.entry(x).read_bytes())
    raw[-30] ^= 0xFF  # one pixel byte, the .npy still well formed
    cache.entry(x).write_bytes(bytes(raw))
    np.testing.assert_array_equal(cache.load(x), truth_x)


def test_concurrent_writers_leave_complete_entries(tmp_path: Path):
    """Four processes fill the same (empty) cache at once: every entry is whole and right, and no
    temporary file is left behind."""
    paths = _photos(tmp_path / "img", 6)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=fill, args=(str(tmp_path / "cache"), paths, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = ImageCache(tmp_path / "cache", 20)
    assert cache.missing(paths) == []
    reference = ImageCache(tmp_path / "ref", 20)
    for p in paths:
        np.testing.assert_array_equal(cache.read(p), reference.load(p))  # None for a missing or broken entry
    assert [f for f in (tmp_path / "cache").rglob("*") if f.is_file() and f.suffix != ".npy"] == []


def test_device_normalisation_matches_albumentations(tmp_path: Path):
    paths = _photos(tmp_path / "img")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    aug = _aug("aug.crop_pct=0.875")
    cpu = torch.stack([ImageDataset(paths, None, build_transform(aug, False, mean, std))[i][0] for i in range(6)])
    raw = torch.stack([ImageDataset(paths, None, build_transform(aug, False))[i][0] for i in range(6)])
    dev = Runtime(torch.device("cpu")).batch(raw, Norm(mean, std))
    assert cpu.dtype == dev.dtype == torch.float32
    torch.testing.assert_close(dev, cpu, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="Norm"):
        Runtime(torch.device("cpu")).batch(raw)  # a uint8 batch never reaches a model unnormalised


def test_image_check_fills_the_cache_and_two_folds_share_it(demo_dir: Path, tmp_path: Path, demo_cfg):
    """data.check_images decodes each image once and leaves it cached; fold 0 and fold 1 then
    build nothing (their entries' files are not even rewritten)."""
    cfg = demo_cfg(demo_dir, tmp_path / "out", *TINY, "data.check_images=true", "data.cache=true")
    train_df, val_df, _ = fold_tables(cfg, 0)
    cache = image_cache(cfg, train=True)
    paths = pd.concat([train_df, val_df])["path"].tolist()
    assert cache.missing(paths) == [] and cache.dir.parent == cache_root(cfg) == tmp_path / "out" / "cache"
    stamps = {p: cache.entry(p).stat().st_mtime_ns for p in paths}
    for fold in (0, 1):
        train_fold(cfg, fold)
    assert {p: cache.entry(p).stat().st_mtime_ns for p in paths} == stamps
    assert len(list(cache.dir.rglob("*.npy"))) == len(set(paths))


def test_cache_off_reads_the_files(demo_dir: Path, tmp_path: Path, demo_cfg):
    cfg = demo_cfg(demo_dir, tmp_path / "out", *TINY, "data.cache=false")
    s = setup_fold(cfg, 0, Runtime.from_cfg(cfg.runtime))
    assert s.train_loader.dataset.cache is None and not (tmp_path / "out" / "cache").exists()
    x, _ = next(iter(s.train_loader))
    assert x.dtype == torch.uint8  # the batch is normalised on the device, not in the loader


def test_history_and_epoch_line_report_throughput_and_loader_wait(demo_dir: Path, tmp_path: Path, demo_cfg, capsys):
    cfg = demo_cfg(demo_dir, tmp_path / "out", *TINY, "train.epochs=2")
    train_fold(cfg, 0)
    hist = pd.read_csv(fold_paths(cfg.out_dir, 0).history)
    assert len(hist) == 2
    assert (hist["img_per_s"] > 0).all() and np.isfinite(hist["img_per_s"]).all()
    assert ((hist["data_wait"] >= 0) & (hist["data_wait"] < 1)).all()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and all("img_per_s" in ln and "data_wait" in ln for ln in lines)


def test_workers_default_to_the_cores_available(tmp_path: Path):
    cfg = load_config(REPO / "configs/base.yaml")
    assert cfg.loader.num_workers == "auto"
    assert resolve_workers(cfg.loader) == len(os.sched_getaffinity(0))
    ds = ImageDataset(_photos(tmp_path / "img", 2), None, build_transform(_aug(), False))
    assert make_loader(ds, cfg.loader).num_workers == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_compile_falls_back_to_eager_with_a_warning(demo_dir: Path, tmp_path: Path, overrides_for):
    """A machine without a C++ compiler cannot compile for the CPU: training warns and goes on."""
    out = tmp_path / "out"
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "PYTHONWARNINGS": "default"}
    cmd = [sys.executable, "-m", "src.train", "--config", "configs/demo.yaml", "--fold", "0",
           *overrides_for(demo_dir, out, *TINY, "train.compile=true")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch.compile failed" in proc.stderr and "without compiling" in proc.stderr
    assert (out / "demo" / "fold0" / "done.json").is_file()


@pytest.mark.slow
def test_bench_stages_runs_every_stage_on_photos(tmp_path: Path):
    """The stage benchmark end to end, tiny: every stage reports positive rates and ratios that
    are the quotients of its own rates; the peer really went through timm's data path."""
    from src.bench import main

    res = tmp_path / "res"
    main(["--stages", "--config", "configs/demo.yaml", "--photos", "24", "--batches", "1", "--test-images", "8",
          "--work", str(tmp_path / "work"), "--results", str(res), "loader.batch_size=8", "aug.img_size=32",
          "loader.num_workers=0"])
    (out,) = res.glob("*.json")
    r = json.loads(out.read_text())
    photos = sorted((tmp_path / "work" / "photos" / "train").rglob("*.jpg"))
    assert len(photos) == r["photos"] == 24 and Image.open(photos[0]).size == (500, 375)
    a, b, c, d, e, p = (r[k] for k in ("a_pipeline", "b_photos_vs_synthetic", "c_frozen_vs_full", "d_ensemble",
                                       "e_flops", "peer_timm"))
    for v in (a["decode_img_per_s"], a["cache_img_per_s"], b["photos_img_per_s"], b["synthetic_img_per_s"],
              c["full_img_per_s"], d["ensemble_img_per_s"], d["pure_forward_img_per_s"], e["gflop_per_img"],
              e["matmul_peak_tflops"], p["timm_img_per_s"]):
        assert np.isfinite(v) and v > 0
    assert a["cache_speedup"] == pytest.approx(a["cache_img_per_s"] / a["decode_img_per_s"], abs=0.01)
    assert b["photos_vs_synthetic"] == pytest.approx(b["photos_img_per_s"] / b["synthetic_img_per_s"], abs=0.002)
    assert 0 <= b["photos_data_wait"] < 1 and d["images"] == 8 and d["views"] == ["identity", "hflip"]
    assert p["src_train_vs_timm"] == pytest.approx(p["src_train_img_per_s"] / p["timm_img_per_s"], abs=0.002)
    assert "RandomResizedCrop" in p["timm_transform"]
    assert any("only 1 timed batches" in w for w in r["warnings"])  # too short to trust, and said so


def test_implausible_ratios_are_flagged_and_plausible_ones_are_not():
    from src.analysis.bench_stages import implausible

    ok = {"b_photos_vs_synthetic": {"batches": 16, "photos_vs_synthetic": 0.8}, "c_frozen_vs_full": {"frozen_speedup": 1.6},
          "d_ensemble": {"ensemble_vs_pure_time": 1.2}, "e_flops": {"fraction_of_peak": 0.4}}
    assert implausible(ok) == []
    for stage, key, value, words in (("b_photos_vs_synthetic", "photos_vs_synthetic", 4.4, "photos trained 4.4x"),
                                     ("c_frozen_vs_full", "frozen_speedup", 0.5, "frozen model"),
                                     ("d_ensemble", "ensemble_vs_pure_time", 0.5, "ensemble pass"),
                                     ("e_flops", "fraction_of_peak", 1.7, "matmul peak")):
        bad = {**ok, stage: {**ok[stage], key: value}}
        (line,) = implausible(bad)
        assert words in line and line.startswith("implausible")


def test_the_model_benchmark_times_the_competitions_head(demo_dir, demo_cfg, tmp_path):
    from src.analysis.model_bench import head_classes
    from src.core.config import load_config

    assert head_classes(demo_cfg(demo_dir, tmp_path))[0] == 10
    assert head_classes(demo_cfg(demo_dir, tmp_path, "data.task=ordinal", "loss.name=mse"))[0] == 1
    assert head_classes(load_config(Path("configs/resnext101.yaml"), []))[0] == 1000
