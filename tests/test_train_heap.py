"""Returning the allocator's free pages between the forward and the backward."""

import pytest
import torch
from train_helpers import tiny_config

from scops_fast.train import Trainer
from scops_fast.train import trainer as trainer_module
from scops_fast.train.heap import heap_trim_available, release_free_heap


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not heap_trim_available(), reason="the C library has no malloc_trim")
def test_freed_heap_blocks_are_given_back():
    # 64 KiB blocks sit below glibc's smallest mmap threshold: they come from the heap.
    # The last one stays alive, so the freed ones below it cannot be trimmed from the top.
    blocks = [torch.ones(16 * 1024) for _ in range(3000)]
    keep = blocks[-1]
    del blocks
    before = rss_mb()
    assert release_free_heap()
    after = rss_mb()
    assert before - after > 100, (before, after)
    assert keep.sum().item() == keep.numel()


@pytest.mark.parametrize("release", [True, False])
def test_trainer_releases_the_heap_once_per_step_before_the_backward(
    tmp_path, monkeypatch, release
):
    calls = []
    real_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        calls.append("backward")
        return real_backward(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "release_free_heap", lambda: calls.append("release"))
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    cfg = tiny_config(release_heap=release)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False)
    trainer.train(until=2)
    expected = ["release", "backward"] if release else ["backward"]
    assert calls == expected * 2
