"""Where and how models compute: device, AMP, channels_last, and the one inference loop.

Every command (train, ensemble, tune, bench) builds a `Runtime` from the config's `runtime`
section and runs models through it, so validation, the ensemble and the benchmark predict the
same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from src.config import RuntimeCfg
from src.progress import progress
from src.tta import apply_view
from src.utils import UserError


def pick_device(pref: str) -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device=cuda but no CUDA device is visible; set runtime.device=auto or cpu")
    if pref == "mps" and not has_mps:
        raise UserError("runtime.device=mps but Apple MPS is not available; set runtime.device=auto or cpu")
    return torch.device(pref)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: only on CUDA; auto picks bf16 where supported, else fp16."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: the device, the autocast dtype (None = fp32) and the memory format."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def from_cfg(cls, cfg: RuntimeCfg) -> Runtime:
        """Resolve `auto` choices and set the process-wide cuDNN/determinism switches."""
        device = pick_device(cfg.device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        return cls(device, amp_dtype(cfg.amp, device), cfg.channels_last and device.type == "cuda")

    @property
    def amp_name(self) -> str:
        return str(self.dtype).removeprefix("torch.") if self.dtype is not None else "off"

    def autocast(self):
        """torch.autocast with the runtime's dtype, or a no-op context in fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the device, in channels_last where that is on."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch (N, C, H, W) on the device, in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(models: list[torch.nn.Module], loader, rt: Runtime, views: list[str] | tuple[str, ...] = ("identity",),
            desc: str = "predict") -> np.ndarray:
    """Logits of every model for every view of every image, in loader order.

    Each batch is decoded once; each view is made from it on the device and fed to every model.
    Returns float32 numpy of shape (models, views, N, classes).
    """
    out: list[list[list[torch.Tensor]]] = [[[] for _ in views] for _ in models]
    for m in models:
        m.eval()
    for x, _ in progress(loader, desc=desc):
        x = rt.batch(x)
        for vi, v in enumerate(views):
            xv = apply_view(v, x)
            if rt.channels_last:
                xv = xv.contiguous(memory_format=torch.channels_last)  # flips and rotations change strides
            for mi, m in enumerate(models):
                with rt.autocast():
                    out[mi][vi].append(m(xv).float().cpu())
    return np.stack([np.stack([torch.cat(v).numpy() for v in per_model]) for per_model in out])
