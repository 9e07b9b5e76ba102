"""Throughput: of the model on synthetic batches, or of every stage of the real pipeline.

    python -m src.bench --config configs/resnext101.yaml [--steps 30] [section.key=value ...]
    python -m src.bench --stages [--photos 2000] [--batches 8] [--folds 2] [--views identity hflip] ...

Without --stages: the configured model with its freezing, optimizer, AMP and channels_last
settings, images per second for a training step and for inference, and peak accelerator
memory; appends a JSON line to outputs/bench/results.jsonl.

With --stages: builds a set of 500x375 JPEGs and measures, as images/s and as ratios, the data
pipeline with and without the image cache, a training epoch on photos against in-memory tensors,
the frozen recipe against a fully trainable model, the ensemble's inference pass against pure
forwards, the FLOP/s achieved against the matmul peak, and src.train's epoch against timm's
train.py data path (see src/perf.py); writes benchmarks/results/<device>.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from src.analysis.bench_stages import make_photos, run_stages
from src.core.cli import command_parser, run_cli
from src.core.config import add_config_args, load_config
from src.core.runtime import Runtime, predict
from src.core.utils import atomic_write_text
from src.models.losses import build_loss
from src.models.model import build_model, freeze, param_counts, param_groups, set_train_mode
from src.models.optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(cfg, steps: int = 30, warmup: int = 5, n_classes: int = 1000) -> dict:
    """Time `steps` training steps and inference batches after `warmup` of each."""
    rt = Runtime.from_cfg(cfg.runtime)
    device = rt.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg.model, n_classes, pretrained=False, img_size=cfg.aug.img_size)
    frozen = freeze(model, cfg.model.freeze_before, cfg.model.freeze_stages)
    model = rt.model(model)
    opt = build_optimizer(cfg.optim, param_groups(model, cfg.optim.weight_decay, frozen, 1.0, False))
    criterion = build_loss(cfg.loss, n_classes, torch.zeros(1, dtype=torch.long).numpy()).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.dtype == torch.float16)
    bs, size = cfg.loader.batch_size, cfg.aug.img_size
    x = rt.batch(torch.randn(bs, 3, size, size))
    y = torch.randint(0, n_classes, (bs,), device=device)

    def train_step() -> None:
        with rt.autocast():
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    set_train_mode(model, frozen)
    for _ in range(warmup):
        train_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    _sync(device)
    train_ips = steps * bs / (time.perf_counter() - t0)

    # Inference through the loop validation and the ensemble use (logits copied back per batch).
    predict([model], [(x, None)] * warmup, rt)
    _sync(device)
    t0 = time.perf_counter()
    predict([model], [(x, None)] * steps, rt)
    _sync(device)
    infer_ips = steps * bs / (time.perf_counter() - t0)
    return {
        "model": cfg.model.name,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
        "amp": rt.amp_name,
        "channels_last": rt.channels_last,
        "batch_size": bs,
        "img_size": size,
        "params": param_counts(model),
        "train_img_per_s": round(train_ips, 1),
        "infer_img_per_s": round(infer_ips, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }


def stages(args) -> None:
    photos = make_photos(Path(args.work) / "photos", args.photos)
    common = [f"data.dir={photos}", "data.layout=imagefolder", "data.n_folds=5", "data.check_images=false",
              f"experiment.output_dir={args.work}", "experiment.name=bench", "wandb.mode=disabled",
              f"train.limit_batches={args.batches}", "model.pretrained=false"]
    cfg = load_config(args.config, [*common, *args.overrides])
    full = load_config(args.config, [*common, *args.overrides, "model.freeze_before=null", "model.freeze_stages=null"])
    result = run_stages(cfg, full, photos, args.folds, args.views, args.test_images)
    result["command"] = "python -m src.bench " + " ".join(args.raw)
    print(json.dumps(result, indent=2))
    out = Path(args.results) / f"{result['device']}{'-' + args.tag if args.tag else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after 5 warmup steps)")
    parser.add_argument("--out", default="outputs/bench/results.jsonl", help="JSON-lines file to append to")
    parser.add_argument("--stages", action="store_true", help="benchmark every stage of the pipeline on real photos")
    parser.add_argument("--photos", type=int, default=2000, help="--stages: training (and test) photos to make")
    parser.add_argument("--batches", type=int, default=16, help="--stages: batches per timed training epoch")
    parser.add_argument("--folds", type=int, default=2, help="--stages: fold models in the ensemble pass")
    parser.add_argument("--views", nargs="+", default=["identity", "hflip"], help="--stages: TTA views")
    parser.add_argument("--test-images", type=int, default=512, help="--stages: test photos in the ensemble pass")
    parser.add_argument("--work", default="outputs/bench", help="--stages: folder for photos, cache and folds")
    parser.add_argument("--results", default="benchmarks/results", help="--stages: folder of <device>[-tag].json")
    parser.add_argument("--tag", default="", help="--stages: suffix of the results file (another model, say)")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    if args.stages:
        args.raw = list(argv if argv is not None else sys.argv[1:])
        return stages(args)
    cfg = load_config(args.config, args.overrides)
    result = bench(cfg, args.steps)
    print(json.dumps(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":


    run_cli(main)
