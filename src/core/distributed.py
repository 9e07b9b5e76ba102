"""Several processes, one job: torchrun's DistributedDataParallel for training and inference.

    torchrun --nproc_per_node 4 -m src.train --config C --fold all     # 4 GPUs of one machine
    torchrun --nproc_per_node 4 -m src.ensemble --config C             # the test set in 4 shards

torchrun starts the processes and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
`launched` joins them into one process group (nccl on CUDA, gloo on CPU). Without torchrun every
helper here is the single-process identity, so the commands run unchanged.

Rank 0 alone writes files, prints and tracks; the others compute their share and hand it over.
The shares are cut so that each process sees exactly the batches a single process would see:
training takes every N-th item of the one global (index, augmentation seed) order of an epoch,
inference contiguous runs of whole batches, gathered back in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from src.core.runtime import pick_device

T = TypeVar("T")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------- the process group


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files, prints and tracks."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def launched(device_pref: str = "auto", timeout_s: int = 1800):
    """Join torchrun's process group for the block (a no-op without torchrun).

    Each process takes the GPU of its LOCAL_RANK, so `cuda` means that GPU from here on. Other
    ranks than 0 print nothing on stdout and show no warnings; their errors still reach stderr.
    """
    if not under_torchrun() or enabled():
        yield
        return
    device = pick_device(device_pref)
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s),
                            device_id=torch.device("cuda", local) if device.type == "cuda" else None)
    try:
        with _quiet_unless_main():
            if is_main():
                print(f"distributed: {world_size()} processes, backend {dist.get_backend()}")
            yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _quiet_unless_main():
    if is_main():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    sys.stdout.flush()


def barrier() -> None:
    if enabled():
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the other ranks: whatever rank 0 writes (the folds file, the image
    check) the others then read instead of writing it again."""
    if not enabled():
        return fn()
    out = fn() if is_main() else None
    barrier()
    return out if is_main() else fn()


def from_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 only, its result handed to every rank (a decision all must share)."""
    if not enabled():
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(cm) -> contextlib.AbstractContextManager:
    """`cm` entered on rank 0 only (a fold lock: the other ranks would find it taken)."""
    return cm if is_main() else contextlib.nullcontext()


def common(items: set) -> set:
    """The items every rank holds (e.g. cache hits), so that all ranks plan the same passes."""
    if not enabled():
        return set(items)
    every: list = [None] * world_size()
    dist.all_gather_object(every, set(items))
    return set.intersection(*every)


def mean_over_ranks(values: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """`values` with `keys` averaged over the ranks (each rank ran as many equal batches)."""
    if not enabled():
        return values
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return {**values, **{k: float(v) / world_size() for k, v in zip(keys, t.tolist())}}


# ---------------------------------------------------------------- shares of the data


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, augmentation seed), shuffled, both a pure function of (seed, epoch).

    It runs in the main process, so `set_epoch` reaches persistent workers too.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])


class ShardedEpochSampler(EpochSampler):
    """This rank's share of an EpochSampler epoch: items rank, rank + N, rank + 2N, ...

    The global order and every item's augmentation seed stay a function of (seed, epoch) only, so
    batch t of the N ranks together holds exactly the items of batch t of one process whose batch
    is N times larger: an epoch sees the same augmented images whatever N. The last n % N items
    of an epoch's order are left out, so that every rank runs as many steps.
    """

    def __init__(self, n: int, seed: int, rank: int, world: int):
        super().__init__(n, seed)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self):
        items = list(super().__iter__())
        return iter(items[self.rank: self.world * len(self): self.world])


def epoch_sampler(n: int, seed: int) -> EpochSampler:
    """The training sampler: the whole epoch in one process, this rank's share under torchrun."""
    return ShardedEpochSampler(n, seed, rank(), world_size()) if enabled() else EpochSampler(n, seed)


def shard_range(n: int, batch_size: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of n ordered items: whole batches of `batch_size` when every
    rank gets at least one (then each rank predicts exactly the batches one process would), else
    items. Concatenated in rank order the shares are range(n)."""
    batches = -(-n // batch_size)
    unit = batch_size if batches >= world else 1
    units = -(-n // unit)
    lo, hi = rank * units // world * unit, (rank + 1) * units // world * unit
    return range(min(lo, n), min(hi, n))


def shard_dataset(ds, batch_size: int):
    """This rank's share of an in-order dataset (the whole dataset in one process)."""
    if not enabled():
        return ds
    return torch.utils.data.Subset(ds, list(shard_range(len(ds), batch_size, rank(), world_size())))


def gather_rows(part: np.ndarray | None, axis: int = 0) -> np.ndarray:
    """Every rank's share (None: an empty one) concatenated along `axis` in rank order, on every
    rank; the input itself in one process."""
    if not enabled():
        return part
    every: list = [None] * world_size()
    dist.all_gather_object(every, part)
    return np.concatenate([p for p in every if p is not None], axis=axis)


# ---------------------------------------------------------------- the model


def wrap(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel | None:
    """DistributedDataParallel over the model's trainable parameters (None in one process).

    DDP fixes the parameters it synchronises when it is built, so a model unfrozen later is
    wrapped again."""
    if not enabled():
        return None
    if not any(p.requires_grad for p in model.parameters()):
        return None
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)


def describe_batch(batch_size: int, accum_steps: int, lr: float | None) -> str:
    """The effective batch size and the learning rate, said once at the start of a fold; lr None:
    the batch alone (the lr finder's sweep, which says its own rates)."""
    n = world_size()
    batch = (f"effective batch size {n * batch_size * accum_steps} ({n} process{'es' if n > 1 else ''} x "
             f"{batch_size} x {accum_steps} accumulation steps)")
    if lr is None:
        return batch
    return f"{batch}; learning rate {lr:g} as configured (not rescaled for the batch size: set optim.lr to scale it)"


def same_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics recomputed on its share of the images) on every
    rank, so that all ranks validate one model."""
    if not enabled():
        return
    for b in model.buffers():
        dist.broadcast(b, 0)
