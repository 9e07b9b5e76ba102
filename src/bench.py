"""Training and inference throughput of a config's model, on synthetic batches.

    python -m src.bench --config configs/resnext101.yaml [--steps 30] [section.key=value ...]

Measures the configured model with its freezing, optimizer, AMP and channels_last settings:
images per second for a training step and for inference, and peak accelerator memory. Data
loading is left out (it is a property of the disk and the CPU count, not of the model).
Appends a JSON line to outputs/bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from src.config import add_config_args, load_config
from src.losses import build_loss
from src.model import build_model, freeze, param_counts, param_groups, set_train_mode
from src.optim import build_optimizer
from src.runtime import Runtime, predict


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after 5 warmup steps)")
    parser.add_argument("--out", default="outputs/bench/results.jsonl", help="JSON-lines file to append to")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    result = bench(cfg, args.steps)
    print(json.dumps(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    from src.utils import run_cli

    run_cli(main)
