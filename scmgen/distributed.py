"""Running under `torchrun`: the process group from the environment, each rank's shard of the
data, DDP wrapping, rank-0-only side effects and metric reduction.

Nothing here knows what is being trained, so every trainer can use it. Without torchrun (no
WORLD_SIZE, or WORLD_SIZE=1) each helper is the single-process identity: no process group,
the sampler's one shard is the whole data set, `on_main` just runs.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among `world_size` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_from_env(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on CUDA with one GPU per process (cuda:LOCAL_RANK),
    gloo on CPU with the cores split between the processes of this machine unless OMP_NUM_THREADS
    says otherwise. A lone process initialises nothing and gets rank 0 of 1 on `device`."""
    wanted = torch.device(device) if device is not None else default_device()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=wanted)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    elif "OMP_NUM_THREADS" not in os.environ:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, wanted)


def cleanup() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """`module` wrapped for data-parallel gradient averaging, or `module` itself in one process."""
    if not info.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (for saving and for evaluating without gradient sync)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def on_main(info: DistInfo, action: Callable[[], T]) -> T | None:
    """Run a side effect (writing files) on rank 0 alone; every rank waits for it, so afterwards
    all of them may read what was written."""
    result = action() if info.is_main else None
    barrier(info)
    return result


def all_reduce_sum(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Sum each metric over the ranks (every rank must pass the same keys). Reduce sums and counts,
    then divide, so shards of different sizes are weighted by what they hold."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    on = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=on)
    dist.all_reduce(total)
    reduced = dict(zip(keys, total.tolist()))
    return {k: reduced[k] for k in values}


class ShardSampler:
    """This rank's share of range(n), freshly shuffled every epoch.

    Epoch e's order is a permutation seeded by (seed, e), identical on every rank; rank r takes
    positions r, r + world, r + 2 world, ... so the shards are disjoint and together cover the
    data. With `drop_last` (training) the last n mod world positions are left out so every rank
    takes the same number of steps, which DDP needs; without it (evaluation) nothing is left out
    and shards may differ by one item.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return max(0, math.ceil((self.n - self.rank) / self.world_size))

    def indices(self, epoch: int = 0) -> torch.Tensor:
        """This rank's indices for `epoch`, in the epoch's order."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        else:
            order = torch.arange(self.n)
        end = self.n - self.n % self.world_size if self.drop_last else self.n
        return order[self.rank:end:self.world_size]

    def batches(self, batch_size: int, epoch: int = 0) -> Iterator[torch.Tensor]:
        """Endless full batches of this rank's indices, epoch after epoch from `epoch`; a partial
        batch at an epoch's end is dropped."""
        if batch_size < 1 or len(self) < batch_size:
            raise ValueError(f"a shard of {len(self)} items cannot fill a batch of {batch_size}")
        while True:
            shard = self.indices(epoch)
            for start in range(0, len(shard) - batch_size + 1, batch_size):
                yield shard[start:start + batch_size]
            epoch += 1
