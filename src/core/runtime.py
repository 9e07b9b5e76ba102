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

from src.core.config import RuntimeCfg
from src.core.progress import progress
from src.core.utils import UserError
from src.core.views import apply_view


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


FLUSH_EVERY = 32


def on_image(x, fn):
    """`fn` applied to a batch's images: the batch itself, or the image of an (image, metadata) pair,
    whose metadata stays as it is (TTA views and resizing transform the image only)."""
    return (fn(x[0]), x[1]) if isinstance(x, tuple) else fn(x)


@dataclass(frozen=True)
class Norm:
    """Normalisation of image batches where they are computed (on the device), the way
    albumentations' Normalize does it on the CPU: uint8 as (x - 255 mean) / (255 std), float
    arrays (src.data.arrays) as (x - mean) / std in their own units, in float32.

    Photos travel as uint8 (a quarter of float32's bytes over PCIe and through the loader's
    queues) and the subtraction runs on the accelerator instead of in the loader's workers.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"Norm expects uint8 or float32 images, got {x.dtype}")
        if x.shape[1] != len(self.mean):
            raise UserError(f"the images have {x.shape[1]} channels and the normalisation {len(self.mean)} "
                            "(aug.mean / aug.std); give one value per channel, or null for the training images' own")
        shift, scale = self._constants(x.device, 255.0 if x.dtype == torch.uint8 else 1.0)
        return (x.float() - shift) * scale

    def _constants(self, device: torch.device, top: float) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_on", {})
        if (device, top) not in cache:  # built once per device: no host-to-device copy per batch
            mean = np.asarray(self.mean, dtype=np.float64) * top
            scale = np.reciprocal(np.asarray(self.std, dtype=np.float64) * top)
            cache[device, top] = tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                                       for v in (mean, scale))
        return cache[device, top]


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

    def batch(self, x: torch.Tensor | list, norm: Norm | None = None) -> torch.Tensor | tuple:
        """An image batch (N, C, H, W) on the device, normalised there with `norm` (a loader's uint8
        photos or float32 arrays; without it a float batch is taken as normalised already), in the
        model's memory format. The copy is asynchronous (from pinned memory on CUDA). A batch of
        (image, metadata) pairs (data.meta_cols) comes as [images, vectors (N, D)] and leaves as the pair."""
        if isinstance(x, (list, tuple)):
            return self.batch(x[0], norm), x[1].to(self.device, non_blocking=True)
        x = x.to(self.device, non_blocking=True)
        if norm is not None:
            x = norm(x)
        elif x.dtype == torch.uint8:
            raise ValueError("a uint8 image batch needs its Norm (mean and std) to become model input")
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(models: list[torch.nn.Module], loader, rt: Runtime, views: list[str] | tuple[str, ...] = ("identity",),
            desc: str = "predict", norm: Norm | None = None) -> np.ndarray:
    """Logits of every model for every view of every image, in loader order.

    Each batch is decoded once, copied to the device (as uint8, normalised there with `norm`);
    each view is made from it on the device and fed to every model, under the runtime's autocast
    and memory format. Logits are copied back every FLUSH_EVERY batches, not after each one.
    Returns float32 numpy of shape (models, views, N, classes).
    """
    pending: list[torch.Tensor] = []  # (models, views, B, C) per batch, still on the device
    done: list[np.ndarray] = []
    for m in models:
        m.eval()
    for i, (x, _) in enumerate(progress(loader, desc=desc), 1):
        x = rt.batch(x, norm)
        per_view = []
        for v in views:
            xv = on_image(x, lambda im, v=v: apply_view(v, im))
            if rt.channels_last:  # flips and rotations change strides
                xv = on_image(xv, lambda im: im.contiguous(memory_format=torch.channels_last))
            with rt.autocast():
                per_view.append(torch.stack([m(xv).float() for m in models]))
        pending.append(torch.stack(per_view, 1))
        if i % FLUSH_EVERY == 0:  # one device sync per FLUSH_EVERY batches bounds the memory held there
            done.append(torch.cat(pending, 2).cpu().numpy())
            pending = []
    if pending:
        done.append(torch.cat(pending, 2).cpu().numpy())
    if not done:
        return np.zeros((len(models), len(views), 0, 0), dtype=np.float32)
    return np.concatenate(done, 2)
