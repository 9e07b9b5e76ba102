"""Shared fixtures: the digits demo built once per session, configs pointed at it, and torch on
one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from src.core.config import CONFIG_DIR, Config, load_config
from src.demo import build_demo

REPO = CONFIG_DIR.parent
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
# One epoch of a few batches of timm's tiny ResNet at 32 px: the real loop, in about a second.
TINY = (
    "model.name=test_resnet",
    "aug.img_size=32",
    "train.epochs=1",
    "train.limit_batches=3",
    "loader.batch_size=16",
    "loader.num_workers=0",
    "data.check_images=false",
)

# Every Optuna trial in the tune tests: test_resnet at demo.yaml's 32 px, one epoch of two batches.
TRIAL = (
    "model.name=test_resnet",
    "train.epochs=1",
    "train.limit_batches=2",
    "loader.batch_size=32",
    "loader.num_workers=0",
    "data.check_images=false",
    "data.n_folds=5",
)


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


TASKS = ("multiclass", "binary", "topk", "multilabel", "ordinal")


def build_task_competition(task: str, root: Path, demo_dir: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """(competition folder, its demo config, overrides) of a small competition of `task` under
    `root` (binary: the demo's 0s and 1s; multilabel and ordinal: 160 training and 40 test grids)."""
    import pandas as pd

    from src.demo import build_multilabel_demo, build_ordinal_demo

    if task in ("multiclass", "topk"):
        return demo_dir, CONFIG_DIR / ("demo.yaml" if task == "multiclass" else "demo_topk.yaml"), ()
    if task == "binary":
        comp = root / "digits_binary"
        comp.mkdir(parents=True)
        for name in ("train", "test"):
            os.symlink(demo_dir / name, comp / name)
        for name in ("train.csv", "solution.csv"):
            table = pd.read_csv(demo_dir / name, dtype=str)
            table[table["label"].isin(["0", "1"])].to_csv(comp / name, index=False)
        sol = pd.read_csv(comp / "solution.csv", dtype=str)
        pd.DataFrame({"id": sol["id"], "label": 0.5}).to_csv(comp / "sample_submission.csv", index=False)
        return comp, DEMO_CONFIG, ("data.task=binary", "metric.name=roc_auc")
    if task == "multilabel":
        return build_multilabel_demo(root / "digits_multilabel", 160, 40), CONFIG_DIR / "demo_multilabel.yaml", ()
    return build_ordinal_demo(root / "digits_ordinal", 160, 40), CONFIG_DIR / "demo_ordinal.yaml", ()


@pytest.fixture(scope="session")
def task_competition(demo_dir, tmp_path_factory) -> Callable[[str], tuple[Path, Path, tuple[str, ...]]]:
    """task_competition(task) -> (competition folder, its demo config, overrides): the competitions
    of build_task_competition, built once per session."""
    built: dict[str, tuple[Path, Path, tuple[str, ...]]] = {}

    def make(task: str) -> tuple[Path, Path, tuple[str, ...]]:
        if task not in built:
            built[task] = build_task_competition(task, tmp_path_factory.mktemp(task), demo_dir)
        return built[task]

    return make


@pytest.fixture(scope="session")
def overrides_for() -> Callable[..., list[str]]:
    """overrides_for(data_dir, out, *extra): the command-line overrides that point configs/demo.yaml
    at a competition folder and an output folder, with W&B off; `extra` wins."""

    def make(data_dir: Path, out: Path, *extra: str) -> list[str]:
        return [f"data.dir={data_dir}", f"experiment.output_dir={out}", "wandb.mode=disabled", *extra]

    return make


@pytest.fixture(scope="session")
def demo_cfg(overrides_for) -> Callable[..., Config]:
    """demo_cfg(data_dir, out, *extra, config=configs/demo.yaml): a loaded config for tests."""

    def make(data_dir: Path, out: Path, *extra: str, config: Path = DEMO_CONFIG) -> Config:
        return load_config(config, overrides_for(data_dir, out, *extra))

    return make


@pytest.fixture(scope="session")
def tiny_cfg(demo_cfg) -> Callable[..., Config]:
    """tiny_cfg(data_dir, out, *extra): demo_cfg with TINY (one short epoch) applied first."""

    def make(data_dir: Path, out: Path, *extra: str) -> Config:
        return demo_cfg(data_dir, out, *TINY, *extra)

    return make


def start_tune_worker(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m src.tune ARGS` in the background, its output in `log`."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "src.tune", *args], cwd=REPO, stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="session")
def tune_workers() -> Callable[..., list[int]]:
    """tune_workers(args, logs): start one `python -m src.tune` per log together, as a cluster
    launches workers, and wait for all; their exit codes (a worker past 300 s is killed)."""

    def run(args: list[str], logs: list[Path]) -> list[int]:
        procs = [start_tune_worker(args, log) for log in logs]
        try:
            return [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()

    return run


def train_two_members(out: Path, demo_dir: Path, demo_cfg, train: tuple[str, ...]) -> None:
    """Experiments a and b (b with another seed), folds 0 and 1 each, under `out`: the members the
    ensemble tests blend."""
    from src.training.trainer import train_fold

    for name, extra in (("a", ()), ("b", ("experiment.seed=7",))):
        cfg = demo_cfg(demo_dir, out, f"experiment.name={name}", *train, *extra)
        for k in range(2):
            train_fold(cfg, k)
