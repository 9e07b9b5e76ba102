"""The target of test_image_cache's concurrent writers, in a module of its own: a spawned process
imports only this and the cache (not the test module's torch, timm and trainer), so four of them
start in seconds."""

from __future__ import annotations

from src.data.image_cache import ImageCache


def fill(root: str, paths: list[str], side: int) -> None:
    ImageCache(root, side).fill(paths, workers=2)
