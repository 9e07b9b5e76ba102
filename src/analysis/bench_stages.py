"""The stage-by-stage benchmark of `python -m src.bench --stages`: the real pipeline on real photos,
each stage against its own limit.

a. the training data pipeline, decoding every epoch against the image cache;
b. a training epoch on photos against the same steps on in-memory tensors (the loader's cost);
c. the frozen recipe against the same model fully trainable;
d. the ensemble's inference pass (F folds x V views, from files) against F x V pure forwards;
e. the FLOP/s the training step achieves against the device's measured matmul peak;
peer: src.train's epoch against the same epoch built the way timm's train.py builds it.

The photos are cut from the two photographs scikit-learn ships (china.jpg, flower.jpg), at
random positions and scales, flipped, and saved as 500x375 JPEGs in class folders.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.core.config import Config
from src.core.distributed import EpochSampler
from src.core.progress import progress
from src.core.runtime import Runtime, predict
from src.data.image_cache import image_cache
from src.data.loaders import ImageDataset, eval_loader, make_loader, resolve_workers
from src.data.transforms import build_transform
from src.models.model import build_model, set_train_mode
from src.training.engine import train_one_epoch
from src.training.trainer import fill_caches, optimization, setup_fold


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_photos(root: Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """`root/train/<class>/<i>.jpg` and `root/test/<i>.jpg` (n each), built once per (n, size, seed);
    up to 10 classes, at least 10 photos each (so that 5 stratified folds can be cut)."""
    from sklearn.datasets import load_sample_images

    n_classes = max(2, min(10, n // 10))
    stamp = root / "photos.json"
    spec = {"n": n, "classes": n_classes, "size": list(size), "seed": seed, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return root
    sources = load_sample_images().images  # two 427x640 RGB photographs
    rng = np.random.default_rng(seed)
    w, h = size
    for split in ("train", "test"):
        for i in progress(range(n), desc=f"making {split} photos"):
            src = sources[rng.integers(len(sources))]
            scale = rng.uniform(0.55, 1.0)
            cw, ch = int(src.shape[1] * scale), int(src.shape[0] * scale)
            x0, y0 = rng.integers(0, src.shape[1] - cw + 1), rng.integers(0, src.shape[0] - ch + 1)
            crop = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw]).resize((w, h), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            folder = root / split / (f"c{i % n_classes}" if split == "train" else "")
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{i:05d}.jpg", quality=90)
    stamp.write_text(json.dumps(spec))
    return root


def _time_epoch(loader, skip_first: bool = True) -> tuple[int, float]:
    """(images, seconds) of one pass over a loader; the first batch (worker start) is not timed."""
    it = iter(loader)
    n, t0 = 0, time.perf_counter()
    if skip_first:
        next(it)
        t0 = time.perf_counter()
    for x, _ in it:
        n += len(x)
    return n, time.perf_counter() - t0


def stage_pipeline(cfg: Config, paths: list[str], targets: list[int]) -> dict:
    """a. The 224-px training pipeline (decode or cache, resize, affine, flip, collate) with the
    configured workers, one epoch each way, cache built beforehand (its build is timed too)."""
    out = {"workers": resolve_workers(cfg.loader)}
    cache = image_cache(cfg, train=True)
    t0 = time.perf_counter()
    cache.fill(paths, workers=max(2, out["workers"]))
    out["cache_build_s"] = round(time.perf_counter() - t0, 2)
    for name, c in (("decode", None), ("cache", cache)):
        ds = ImageDataset(paths, targets, build_transform(cfg.aug, True), c, cfg.data.dicom_window)
        loader = make_loader(ds, cfg.loader, sampler=EpochSampler(len(ds), seed=0), drop_last=True)
        n, s = _time_epoch(loader)
        out[f"{name}_img_per_s"] = round(n / s, 1)
    out["cache_speedup"] = round(out["cache_img_per_s"] / out["decode_img_per_s"], 2)
    return out


def _synthetic(s, batches: int) -> list:
    """In-memory uint8 batches shaped like the loader's: the same steps with no loading at all."""
    g = torch.Generator().manual_seed(0)
    bs, size = s.cfg.loader.batch_size, s.cfg.aug.img_size
    x = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, len(s.classes), (bs,), generator=g)
    if s.rt.device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    return [(x, y)] * batches


def train_epochs(cfg: Config, rt: Runtime, synthetic: bool) -> dict:
    """An untimed warm-up epoch, then a timed one, through src.train's own setup and loop."""
    s = setup_fold(cfg, 0, rt)
    optimization(s)
    fill_caches(s)
    if synthetic:
        s.train_loader = _synthetic(s, s.batches)
    set_train_mode(s.model, s.frozen)
    train_one_epoch(s, 0)
    row = train_one_epoch(s, 1)
    return {"img_per_s": row["img_per_s"], "data_wait": row["data_wait"], "batches": s.batches,
            "trainable": s.counts["trainable"], "frozen": s.counts["frozen"], "state": s}


def stage_train(cfg: Config, full_cfg: Config, rt: Runtime) -> tuple[dict, dict, object]:
    """b. photos against in-memory tensors; c. frozen against fully trainable (both in memory)."""
    real = train_epochs(cfg, rt, synthetic=False)
    synth = train_epochs(cfg, rt, synthetic=True)
    full = train_epochs(full_cfg, rt, synthetic=True)
    b = {"photos_img_per_s": real["img_per_s"], "photos_data_wait": real["data_wait"],
         "synthetic_img_per_s": synth["img_per_s"], "batches": real["batches"],
         "photos_vs_synthetic": round(real["img_per_s"] / synth["img_per_s"], 3)}
    c = {"frozen_img_per_s": synth["img_per_s"], "full_img_per_s": full["img_per_s"],
         "frozen_trainable_params": synth["trainable"], "full_trainable_params": full["trainable"],
         "frozen_speedup": round(synth["img_per_s"] / full["img_per_s"], 2)}
    return b, c, synth["state"]


def stage_ensemble(cfg: Config, rt: Runtime, paths: list[str], folds: int, views: list[str]) -> dict:
    """d. The ensemble's inference pass (cache, loader, device normalisation, views, F models) over
    test photos against F x V forwards of the same batches already decoded and on the device."""
    models = [rt.model(build_model(cfg.model, 10, pretrained=False, img_size=cfg.aug.img_size)).eval()
              for _ in range(folds)]
    loader, norm = eval_loader(cfg, paths, cfg.loader, rt, models[0].pretrained_cfg)
    predict(models, [next(iter(loader))], rt, views, norm=norm)  # warm-up (cuDNN autotune, workers)
    sync(rt.device)
    t0 = time.perf_counter()
    predict(models, loader, rt, views, norm=norm, desc="ensemble pass")
    sync(rt.device)
    ens = time.perf_counter() - t0
    ready = [rt.batch(x, norm) for x, _ in loader]
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in ready:
            for _ in views:
                for m in models:
                    with rt.autocast():
                        m(x)
    sync(rt.device)
    pure = time.perf_counter() - t0
    n = len(paths)
    return {"folds": folds, "views": views, "images": n, "ensemble_img_per_s": round(n / ens, 1),
            "pure_forward_img_per_s": round(n / pure, 1), "ensemble_vs_pure_time": round(ens / pure, 3)}


def matmul_peak(rt: Runtime, n: int = 4096, reps: int = 20) -> float:
    """The device's measured dense matmul rate (FLOP/s) in the training step's precision."""
    dtype = rt.dtype or torch.float32
    if rt.device.type == "cpu":
        n, reps = 1024, 5
    a = torch.randn(n, n, device=rt.device, dtype=dtype)
    b = torch.randn(n, n, device=rt.device, dtype=dtype)
    a @ b
    sync(rt.device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(rt.device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def stage_flops(s, rt: Runtime, img_per_s: float) -> dict:
    """e. FLOPs of one training step (forward and backward, counted by torch.utils.flop_counter)
    times the measured steps per second, against the matmul peak."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = _synthetic(s, 1)[0]
    x, y = rt.batch(x, s.norm), y.to(rt.device)
    with FlopCounterMode(display=False) as counter:
        with rt.autocast():
            loss = s.criterion(s.model(x), y)
        loss.backward()
    s.optimizer.zero_grad(set_to_none=True)
    per_img = counter.get_total_flops() / len(x)
    achieved, peak = per_img * img_per_s, matmul_peak(rt)
    return {"gflop_per_img": round(per_img / 1e9, 2), "achieved_tflops": round(achieved / 1e12, 3),
            "matmul_peak_tflops": round(peak / 1e12, 3), "fraction_of_peak": round(achieved / peak, 3)}


def stage_timm(cfg: Config, rt: Runtime, train_dir: Path, batches: int) -> dict:
    """peer: the epoch the way timm's train.py builds it: timm.data.create_dataset (its folder
    dataset), create_loader (which applies create_transform's default training transform:
    random-resized crop, flip, colour jitter; and its GPU prefetcher on CUDA), then a plain AMP
    step with the same model, freezing, loss and optimizer as src.train. A warm-up epoch, then
    a timed one of the same number of batches."""
    from timm.data import create_dataset, create_loader, resolve_data_config

    s = setup_fold(cfg, 0, rt)
    optimization(s)
    data_cfg = resolve_data_config({}, model=s.model)
    ds = create_dataset("", root=str(train_dir), split="train", is_training=True)
    loader = create_loader(ds, input_size=(3, cfg.aug.img_size, cfg.aug.img_size), batch_size=cfg.loader.batch_size,
                           is_training=True, mean=data_cfg["mean"], std=data_cfg["std"],
                           num_workers=resolve_workers(cfg.loader), pin_memory=rt.device.type == "cuda",
                           device=rt.device, use_prefetcher=rt.device.type == "cuda", persistent_workers=True)

    def epoch() -> tuple[int, float]:
        n, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                loss = s.criterion(s.model(x), y)
            s.scaler(loss, s.optimizer)  # timm's plain step: no clipping, no accumulation
            n += len(x)
        loss.item()
        sync(rt.device)
        return n, time.perf_counter() - t0

    set_train_mode(s.model, s.frozen)
    epoch()
    n, secs = epoch()
    return {"timm_img_per_s": round(n / secs, 1), "timm_transform": str(loader.dataset.transform).replace("\n", " ")[:400]}


def device_name(rt: Runtime) -> str:
    if rt.device.type == "cuda":
        return torch.cuda.get_device_name().replace(" ", "-")
    return f"cpu-{len(__import__('os').sched_getaffinity(0))}cores"


def run_stages(cfg: Config, full_cfg: Config, photos: Path, folds: int, views: list[str], test_images: int) -> dict:
    """Every stage on one photo set; the cfg points data.dir at `photos` (imagefolder layout)."""
    rt = Runtime.from_cfg(cfg.runtime)
    train_dir = photos / "train"
    paths = sorted(str(p) for p in train_dir.rglob("*.jpg"))
    targets = [int(Path(p).parent.name[1:]) for p in paths]
    result = {"device": device_name(rt), "torch": torch.__version__, "model": cfg.model.name,
              "img_size": cfg.aug.img_size, "batch_size": cfg.loader.batch_size, "amp": rt.amp_name,
              "channels_last": rt.channels_last, "photos": len(paths), "photo_size": "500x375"}
    result["a_pipeline"] = stage_pipeline(cfg, paths, targets)
    result["b_photos_vs_synthetic"], result["c_frozen_vs_full"], state = stage_train(cfg, full_cfg, rt)
    result["d_ensemble"] = stage_ensemble(cfg, rt, sorted(str(p) for p in (photos / "test").glob("*.jpg"))[:test_images],
                                          folds, views)
    result["e_flops"] = stage_flops(state, rt, result["b_photos_vs_synthetic"]["synthetic_img_per_s"])
    peer = stage_timm(cfg, rt, train_dir, result["b_photos_vs_synthetic"]["batches"])
    peer["src_train_img_per_s"] = result["b_photos_vs_synthetic"]["photos_img_per_s"]
    peer["src_train_vs_timm"] = round(peer["src_train_img_per_s"] / peer["timm_img_per_s"], 3)
    result["peer_timm"] = peer
    result["warnings"] = implausible(result)
    return result


def implausible(result: dict) -> list[str]:
    """What the numbers cannot physically be, and runs too short to trust: photos trained faster
    than in-memory tensors, a frozen model slower than a trainable one, an ensemble pass faster
    than its pure forwards, more FLOP/s than the matmul peak, fewer than 8 timed batches."""
    out = []
    b, c = result["b_photos_vs_synthetic"], result["c_frozen_vs_full"]
    d, e = result["d_ensemble"], result["e_flops"]
    if b["batches"] < 8:
        out.append(f"only {b['batches']} timed batches per epoch: the ratios are noise (give --batches 8 or more)")
    checks = [(b["photos_vs_synthetic"] > 1.05, f"photos trained {b['photos_vs_synthetic']}x as fast as in-memory "
               "tensors, which decoding cannot do"),
              (c["frozen_speedup"] < 0.9, f"the frozen model ran at {c['frozen_speedup']}x the trainable one's speed, "
               "which skipping gradients cannot cause"),
              (d["ensemble_vs_pure_time"] < 0.95, f"the ensemble pass took {d['ensemble_vs_pure_time']}x the time of its "
               "pure forwards, which it contains"),
              (e["fraction_of_peak"] > 1.0, f"{e['fraction_of_peak']}x the measured matmul peak")]
    out += [f"implausible: {why}; the machine was likely busy or the run too short, so rerun it" for bad, why in checks
            if bad]
    return out
