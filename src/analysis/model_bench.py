"""Throughput of the configured model on synthetic batches: a training step (freezing, optimizer,
AMP, channels_last as configured) and inference, images per second and peak accelerator memory
(`python -m src.bench` without --stages)."""

from __future__ import annotations

import time

import torch

from src.core.runtime import Runtime, predict
from src.core.tasks import Task
from src.data.meta_table import check_meta, fit_meta, meta_dims, meta_rows
from src.models.losses import build_loss
from src.models.model import build_model, freeze, param_counts, param_groups, set_train_mode
from src.models.optim import LossScaler, build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def head_classes(cfg) -> tuple[int, str]:
    """(the model head's width, why): the competition's classes (or labels, or one grade score)
    when the config names one, else 1000, ImageNet's."""
    from src.core.tasks import task_of
    from src.data.image_cache import cache_root
    from src.data.tables import load_train_table

    if cfg.data.dir is None:
        return 1000, "no competition named (data.dir), so ImageNet's 1000 classes"
    labels = load_train_table(cfg.data, cache_root(cfg))["label"]
    task = task_of(cfg)
    task = task.with_classes(task.class_list(labels))
    return task.n_outputs, f"the {len(task.classes)} {task.noun} of {cfg.data.dir}"


def meta_spec(cfg) -> dict | None:
    """With data.meta_cols (and a competition): the metadata preprocessing fitted on every training
    row, so the timed model has the metadata branch it trains with; else None."""
    from src.data.tables import load_train_table

    if cfg.data.meta_cols is None or cfg.data.dir is None:
        return None
    check_meta(cfg)
    return fit_meta(cfg, meta_rows(cfg, load_train_table(cfg.data)["id"], "train"))


def bench(cfg, steps: int = 30, warmup: int = 5, n_classes: int = 1000, meta: dict | None = None) -> dict:
    """Time `steps` training steps and inference batches after `warmup` of each; `meta` (meta_spec)
    adds the metadata branch, fed vectors of zeros (the mean, or category 0)."""
    rt = Runtime.from_cfg(cfg.runtime)
    device = rt.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg.model, n_classes, pretrained=False, img_size=cfg.aug.img_size, meta=meta)
    frozen = freeze(model, cfg.model.freeze_before, cfg.model.freeze_stages)
    model = rt.model(model)
    opt = build_optimizer(cfg.optim, param_groups(model, cfg.optim.weight_decay, frozen, 1.0, False,
                                                  meta_lr_mult=cfg.optim.meta_lr_mult))
    timed = Task(tuple(str(i) for i in range(n_classes)))  # a softmax head of that width: what is timed
    criterion = build_loss(cfg.loss, timed, torch.zeros(1, dtype=torch.long).numpy()).to(device)
    scaler = LossScaler(device.type, enabled=rt.dtype == torch.float16)
    bs, size = cfg.loader.batch_size, cfg.aug.img_size
    images = torch.randn(bs, 3, size, size)
    if meta is not None:
        dense, cards = meta_dims(meta)
    x = rt.batch(images if meta is None else [images, torch.zeros(bs, dense + len(cards))])
    y = torch.randint(0, n_classes, (bs,), device=device)

    def train_step() -> None:
        with rt.autocast():
            loss = criterion(model(x), y)
        scaler(loss, opt)

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
    batch = x if meta is None else list(x)  # an (image, metadata) batch as the loader yields it
    predict([model], [(batch, None)] * warmup, rt)
    _sync(device)
    t0 = time.perf_counter()
    predict([model], [(batch, None)] * steps, rt)
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
