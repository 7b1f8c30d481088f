"""The CUDA emulation itself (csrc/cuda/emulate.h), under the kernels that the shared suite
(test_backends.py, target "cuda_emu-cpu") checks value by value: blocks run in an order
that changes between launches, __syncthreads() holds a block's threads together, and the
backend is labelled for checking only and never chosen by "auto"."""

import pytest
import torch

import scops_fast
from scops_fast import _dispatch, _ext


@pytest.fixture(scope="module")
def emu():
    reason = _ext.load("_C_cuda_emu")
    assert reason is None, f"the CUDA emulation should be built by `make install`: {reason}"
    return torch.ops.scops_fast_cuda_emu


def test_barrier_holds_every_block_together(emu):
    out = emu.emu_selftest(12)
    assert out[-1].item() == 0, f"{out[-1].item()} reads saw a neighbour's stale slot"
    assert sorted(out[:-1].tolist()) == list(range(12))  # every block ran, once


def test_block_order_changes_between_launches(emu):
    orders = {tuple(emu.emu_selftest(10)[:-1].tolist()) for _ in range(6)}
    # 10! orders: six launches in one order would mean the shuffle is not happening.
    assert len(orders) > 1, orders


def test_backend_is_labelled_and_never_picked_by_auto():
    report = scops_fast.available_backends()
    assert report["cuda_emu"] == ("cpu",)
    assert "for checking only" in report.details["cuda_emu"]
    for device, order in _dispatch.AUTO_ORDER.items():
        assert "cuda_emu" not in order, device
    pred = torch.randn(1, 4, 5, 6)
    assert _dispatch.explain("concentration_loss", "cpu", (pred,))["backend"] != "cuda_emu"


def test_more_parts_than_the_kernels_hold_is_a_clear_error():
    from scops_fast import losses

    pred = torch.randn(1, 41, 5, 6)
    with pytest.raises(scops_fast.BackendUnavailableError, match="at most 33 channels"):
        losses.concentration_loss(pred, backend="cuda_emu")
