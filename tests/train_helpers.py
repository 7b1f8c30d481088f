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


def child_env(threads: int | None = None) -> dict[str, str]:
    """This process's environment for a training child (`python -m scops_fast.train`), which
    imports the tests' data sets (train_fakes) from this folder; OMP_NUM_THREADS=threads."""
    env = dict(os.environ)
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


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


class SimulatedGpu:
    """CUDA's memory as `autobatch.choose_cuda` sees it, with no GPU: a probe step's tensors
    peak at (fixed + per_image[level] * batch) GiB, and the caching allocator reserves
    `reserved_factor` times that (its fragmentation). The allocator may reserve up to the
    per-process memory fraction of the device, less the CUDA context (`context_gib`); above
    that the step fails as CUDA fails (OutOfMemoryError, or cuBLAS's or cuDNN's
    RuntimeError, in turn), leaving garbage in a reference cycle. `torch.cuda`'s peaks,
    reset, empty_cache, memory fraction and mem_get_info answer from it.
    `install(monkeypatch)` puts it in place of the probe step and those calls."""

    GIB = 2**30

    def __init__(
        self,
        per_image: dict,
        device_gib: float,
        fixed_gib: float = 1.0,
        reserved_factor: float = 1.0,
        context_gib: float = 0.0,
    ):
        self.per_image, self.device_gib, self.fixed_gib = per_image, device_gib, fixed_gib
        self.reserved_factor, self.context_gib = reserved_factor, context_gib
        self.peak, self.reserved_peak, self.empties, self.fraction = 0, 0, 0, 1.0
        self.steps, self.garbage, self.fractions = [], [], []
        self.held_gib = 0.0  # what the allocator holds between steps (not free)

    def failure(self):
        kinds = [
            lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED in cublasCreate"),
            lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED."),
        ]
        return kinds[len(self.steps) % len(kinds)]()

    def step_gib(self, level: str, batch: int) -> float:
        return self.fixed_gib + self.per_image[level] * batch

    def allowed_gib(self) -> float:
        return min(self.fraction * self.device_gib, self.device_gib - self.context_gib)

    def probe_step(self, cfg, before=None, steps=1):
        import weakref

        before()
        level, batch = cfg.model.activation_checkpointing, cfg.data.batch_size
        self.steps.append((level, batch))
        peak = int(self.step_gib(level, batch) * self.GIB)
        reserved = int(peak * self.reserved_factor)
        if reserved > self.allowed_gib() * self.GIB:
            held = _Garbage()
            held.me = held  # freed by the collector only
            self.garbage.append(weakref.ref(held))
            raise self.failure()
        self.peak = max(self.peak, peak)
        self.reserved_peak = max(self.reserved_peak, reserved)

    def empty_cache(self):
        assert all(ref() is None for ref in self.garbage), "a failed step's memory lives"
        self.empties += 1

    def reset_peak_memory_stats(self):
        self.peak = self.reserved_peak = 0

    def set_fraction(self, fraction, device=None):
        assert 0 < fraction <= 1, fraction  # as torch checks it
        self.fraction = fraction
        self.fractions.append(fraction)

    def mem_get_info(self, device=None):
        free = self.device_gib - self.context_gib - self.held_gib
        return int(free * self.GIB), int(self.device_gib * self.GIB)

    def install(self, monkeypatch):
        from scops_fast.train import autobatch

        monkeypatch.setattr(autobatch, "probe_step", self.probe_step)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset_peak_memory_stats)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: self.peak)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: self.reserved_peak)
        monkeypatch.setattr(
            torch.cuda, "memory_reserved", lambda device=None: int(self.held_gib * self.GIB)
        )
        monkeypatch.setattr(torch.cuda, "mem_get_info", self.mem_get_info)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", self.set_fraction)
        monkeypatch.setattr(
            torch.cuda, "get_per_process_memory_fraction", lambda device=None: self.fraction
        )
        return self


class _Garbage:
    pass
