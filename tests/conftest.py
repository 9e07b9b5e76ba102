"""Shared fixtures: the digits demo built once per session, and torch on one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.demo import build_demo


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tiny test models run faster on one thread, and several times faster when other
    processes share the (2) cores; the thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The digits competition, built once per session; tests must not modify it (copy it first)."""
    return build_demo(tmp_path_factory.mktemp("demo") / "digits")
