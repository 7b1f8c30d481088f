"""Fused C++ CPU kernels from csrc/, registered as torch custom ops `scops_fast::*`."""

from scops_fast import _ext

DEVICES = ("cpu",)
OPS: dict = {}


def describe() -> str | None:
    """Which instruction-set build of the kernels runs."""
    return _ext.cpu_path()


def probe():
    reason = _ext.load()
    if reason is not None:
        return reason
    import torch

    # The op modules register fake and autograd rules, which need the library loaded.
    from scops_fast.ops import compose, concentration, equivariance, semantic, warp  # noqa: F401

    ops = torch.ops.scops_fast
    OPS.update(
        compose.losses_from(
            compose.Primitives(
                softmax_moments=ops.softmax_moments,
                tps_warp=ops.tps_warp,
                equivariance=ops.equivariance,
                semantic_dense=ops.semantic_dense,
                semantic_lowres=ops.semantic_lowres,
                concentration=ops.concentration,
                concentration_devices=("cpu",),
            )
        )
    )
    return None
