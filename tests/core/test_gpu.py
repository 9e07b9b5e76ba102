"""CUDA-only checks: AMP (bf16 and fp16 with a grad scaler) and channels_last train, resume and
predict; checkpoints written on the GPU load on the CPU. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.runs.checkpoint import load_checkpoint
from src.training.trainer import train_fold

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


GPU = ("runtime.device=cuda", "train.epochs=2", "loader.num_workers=2")


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_amp_channels_last_trains_and_loads_on_cpu(demo_dir, demo_cfg, tmp_path, amp):
    cfg = demo_cfg(demo_dir, tmp_path, *GPU, f"runtime.amp={amp}", "runtime.channels_last=true", "train.ema=true")
    result = train_fold(cfg, 0)
    assert result["accuracy"] > 0.5, result
    ckpt = load_checkpoint(tmp_path / "demo" / "fold0" / "best.pt")
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    scaler = ckpt["train_state"]["scaler"]
    # fp16 needs a loss scale; bf16 and fp32 keep the scaler disabled (an empty state).
    assert bool(scaler) == (amp == "fp16")


def test_resume_on_gpu_matches_uninterrupted(demo_dir, demo_cfg, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(epoch, value):
        if epoch == 0:
            raise Stop

    a = demo_cfg(demo_dir, tmp_path / "a", *GPU, "runtime.amp=bf16")
    train_fold(a, 0)
    b = demo_cfg(demo_dir, tmp_path / "b", *GPU, "runtime.amp=bf16", "runtime.deterministic=true")
    with pytest.raises(Stop):
        train_fold(b, 0, on_epoch=stop_after_first)
    train_fold(b, 0, resume=True)
    ha = load_checkpoint(tmp_path / "a" / "demo" / "fold0" / "last.pt")["history"]
    hb = load_checkpoint(tmp_path / "b" / "demo" / "fold0" / "last.pt")["history"]
    # GPU kernels are not bitwise deterministic between runs; the curves must still agree closely.
    assert len(ha) == len(hb) == 2
    np.testing.assert_allclose([r["val_loss"] for r in ha], [r["val_loss"] for r in hb], rtol=0.05, atol=0.02)


def test_device_normalisation_and_predict_on_cuda(tmp_path):
    """uint8 batches copied from pinned memory and normalised on the GPU equal the CPU result; predict
    under bf16 + channels_last stays close to fp32."""
    from src.core.runtime import Norm, Runtime, predict

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g).pin_memory()
    norm = Norm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cpu = Runtime(torch.device("cpu")).batch(x, norm)
    gpu = Runtime(torch.device("cuda"), None, True).batch(x, norm)
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4))
    fp32 = Runtime(torch.device("cuda"))
    fast = Runtime(torch.device("cuda"), torch.bfloat16, True)
    a = predict([fp32.model(model)], [(x, None)], fp32, ("identity", "hflip"), norm=norm)
    b = predict([fast.model(model)], [(x, None)], fast, ("identity", "hflip"), norm=norm)
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)


def test_compile_trains_on_cuda(demo_dir, demo_cfg, tmp_path):
    cfg = demo_cfg(demo_dir, tmp_path, *GPU, "train.compile=true", "runtime.amp=bf16")
    result = train_fold(cfg, 0)
    assert result["accuracy"] > 0.5, result
