"""Pooled features of a frozen backbone, computed once per image set and cached.

The backbone is the config's timm model with its configured weights (pretrained hub weights or
model.pretrained_path), run through the evaluation transform and the one inference loop
(src.core.runtime.predict); its pooled, pre-logits output (timm's forward_head(pre_logits=True)) is one
row per image. Features are cached under outputs/<experiment>/probe/ keyed by the model, its
weights, the transform, the images (ids, files, sizes, modification times) and the precision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.core.config import Config
from src.core.runtime import Runtime, predict
from src.core.utils import seed_everything
from src.data.loaders import eval_loader
from src.models.model import build_model, has_weights
from src.runs.layout import file_sha1, images_key, save_cached_array

# Bumped when what a cached feature file holds changes.
FEATURES_VERSION = 1


class PooledFeatures(torch.nn.Module):
    """A timm classifier's pooled pre-logits features: (N, 3, H, W) -> (N, D)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.pretrained_cfg = model.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def weights_id(cfg: Config) -> str:
    """What the backbone's weights are: a local file's sha1, the hub tag, or the seed of a random init."""
    m = cfg.model
    if m.pretrained_path:
        return f"file:{file_sha1(Path(m.pretrained_path))}"
    return f"hub:{m.name}" if m.pretrained else f"random:{cfg.experiment.seed}"


def frozen_backbone(cfg: Config, n_classes: int, rt: Runtime) -> PooledFeatures:
    """The config's model with its configured weights, frozen, in eval mode, on the device."""
    if not has_weights(cfg.model):
        print("note: model.pretrained is false and model.pretrained_path is null: the frozen backbone has random "
              "weights, so the probe measures random features (fine for the demo, not a real baseline)")
    seed_everything(cfg.experiment.seed)  # a random init (the demo) is then the same every run
    model = build_model(cfg.model, n_classes, img_size=cfg.aug.img_size)
    for p in model.parameters():
        p.requires_grad_(False)
    return rt.model(PooledFeatures(model)).eval()


def features_key(cfg: Config, ids, paths, rt: Runtime) -> str:
    a = cfg.aug
    parts = [FEATURES_VERSION, cfg.model.name, weights_id(cfg), a.img_size, a.crop_pct, a.mean, a.std,
             images_key(ids, paths), rt.amp_name]
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()


def cached_features(cfg: Config, backbone: Callable[[], PooledFeatures], table: pd.DataFrame, split: str,
                    rt: Runtime, folder: Path, cache: bool = True) -> tuple[np.ndarray, bool]:
    """(features (N, D) of `table`'s images (id, path) in its order, whether they came from the cache).

    `backbone` builds the model (once, e.g. functools.cache): nothing is built when the cache holds both splits.
    """
    path = Path(folder) / f"features-{split}-{features_key(cfg, table['id'], table['path'], rt)[:16]}.npy"
    if cache and path.is_file():
        feats = np.load(path)
        if feats.shape[0] == len(table):
            return feats, True
    model = backbone()
    # The ensemble's evaluation pass: image cache, uint8 batches normalised on the device.
    loader, norm = eval_loader(cfg, table["path"].tolist(), cfg.loader, rt, model.pretrained_cfg)
    feats = predict([model], loader, rt, ["identity"], desc=f"{split} features", norm=norm)[0, 0]  # (N, D)
    if cache:  # one entry per split: features-<split>-<key>.npy
        save_cached_array(path, feats, lambda p: p.name.rsplit("-", 1)[0])
    return feats, False
