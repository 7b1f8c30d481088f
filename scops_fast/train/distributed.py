"""Process-group set-up for `torchrun`: gloo on the CPU, nccl on GPUs."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from scops_fast.train.config import ConfigError

        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        raise ConfigError(
            f"device: 'cuda' asked for, but torch sees no CUDA device on this machine (torch "
            f"{torch.__version__}, built for {build}); use device 'auto' (a GPU when there is "
            "one) or 'cpu', e.g. --set device=auto"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(preference: str = "auto", *, alone: bool = False) -> ProcessInfo:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1), else
    describes a single process. `alone`: a single process on this rank's device even under
    torchrun (the batch-size probe's steps, which rank 0 runs while the others wait: a
    process group there would ask every rank to join its collectives)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world_size <= 1 or alone:
        return ProcessInfo(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), device)


def cpu_group(info: ProcessInfo):
    """A gloo group for the CPU-side collectives of an nccl run (the stop flag, every step:
    on the GPU's group it would wait for the GPU's queue); None, the default group, where that
    is gloo already or the run is one process. Every rank must call it, in the same order."""
    if not info.distributed or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def barrier(info: ProcessInfo, group=None) -> None:
    if info.distributed:
        dist.barrier(group=group)


#: How long the other ranks wait, on a gloo group of their own, for work that one rank does
#: for them: `--batch-size auto`'s probe on rank 0 (scops_fast.cli.train), the saliency maps
#: of `local_rank_zero_first`. The default groups' 10 (nccl) or 30 (gloo) minutes are less
#: than either can take.
ONE_RANK_WAIT = datetime.timedelta(hours=2)


@contextlib.contextmanager
def local_rank_zero_first(info: ProcessInfo):
    """Runs the body on each machine's first process (LOCAL_RANK 0) first, then on the other
    processes of the run at once: for work that fills a cache on disk which the others then
    read, instead of every process doing all of it at the same time (`--saliency auto`'s maps
    on a machine of 8 GPUs). The others wait for every machine's first process, on a gloo
    group of their own with ONE_RANK_WAIT. Where a first process fails, it leaves the group
    (the others' wait then fails) and raises, and torchrun ends the rest."""
    if not info.distributed:
        yield
        return
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    waiting = dist.new_group(backend="gloo", timeout=ONE_RANK_WAIT)
    try:
        if not first:
            dist.barrier(group=waiting)
        yield
        if first:
            dist.barrier(group=waiting)
    finally:
        dist.destroy_process_group(waiting)


def mean_over_ranks(values: torch.Tensor, info: ProcessInfo) -> torch.Tensor:
    if info.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
