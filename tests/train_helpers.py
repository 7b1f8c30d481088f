"""Shared set-up of the training tests: a tiny config on the in-test data set."""

from __future__ import annotations

import contextlib
import os
import socket

import torch

from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.config import Config


def tiny_config(**overrides) -> Config:
    """Small network (width 4), K=3, 32x32 images, batch 2, low-level features."""
    base = {
        "name": "tiny",
        "steps": 6,
        "log_every": 2,
        "checkpoint_every": 3,
        "report": False,
        "device": "cpu",
        "model.arch": "small",
        "model.num_parts": 3,
        "model.width": 4,
        "data.dataset": "train_fakes:TinyParts",
        "data.args": {"n": 8},
        "data.image_size": 32,
        "data.batch_size": 2,
        "features.kind": "lowlevel",
        "features.weights": None,
        "features.stride": 4,
        "optim.lr": 0.01,
    }
    base.update(overrides)
    return Config().replace(base)


def state_tensors(trainer) -> dict:
    """Every tensor that must match between two runs: weights, basis, momenta."""
    out = {f"model.{k}": v for k, v in trainer.net.state_dict().items()}
    out["basis"] = trainer.objective.basis.detach()
    for name, opt in (("net", trainer.net_optimizer), ("basis", trainer.basis_optimizer)):
        for i, state in opt.state_dict()["state"].items():
            out[f"{name}.momentum.{i}"] = state["momentum_buffer"]
    return out


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].equal(b[k]))]
    assert not different, f"differ: {different[:5]}"


def checkpoint_tensors(path) -> dict:
    """Weights, basis and optimiser state of a checkpoint file, flattened (tensors only)."""
    ckpt = load_checkpoint(path)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out["basis"] = ckpt["basis"]
    for name, opt in ckpt["optimizer"].items():
        for i, state in opt["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    out[f"{name}.{i}.{key}"] = value
    return out


@contextlib.contextmanager
def float64():
    """torch's default dtype float64 inside (networks built there are float64)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_local_group(rank: int, port: int, world: int) -> None:
    """The environment torch.distributed reads for rank `rank` of `world` processes on this
    machine (as torchrun sets it), and one thread per rank, for an mp.spawn worker."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)


def spawn_ranks(fn, args: tuple, nprocs: int = 2, timeout: float = 300.0) -> None:
    """mp.spawn(fn, args, nprocs) that fails after `timeout` seconds instead of waiting
    for ever: a rank stuck in a collective ends its test, not the suite's run."""
    import time

    import torch.multiprocessing as mp

    ranks = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ranks.join(timeout=1.0):  # raises when a rank failed
        if time.monotonic() > deadline:
            alive = [i for i, p in enumerate(ranks.processes) if p.is_alive()]
            for p in ranks.processes:
                p.kill()
            raise AssertionError(f"ranks {alive} still running after {timeout:g} s (stuck?)")
