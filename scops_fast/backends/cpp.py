"""Fused C++ CPU kernels from csrc/, registered as torch custom ops `scops_fast::*`."""

from scops_fast import _ext

DEVICES = ("cpu",)
OPS: dict = {}


def probe():
    reason = _ext.load()
    if reason is not None:
        return reason
    # The op modules register fake and autograd rules, which need the library loaded.
    from scops_fast.ops import concentration, equivariance, semantic, warp

    OPS.update(
        batch_get_centers=concentration.batch_get_centers,
        concentration_loss=concentration.concentration_loss,
        semantic_consistency_loss=semantic.semantic_consistency_loss,
        semantic_consistency_loss_lowres=semantic.semantic_consistency_loss_lowres,
        tps_warp=warp.tps_warp,
        equivariance_losses=equivariance.equivariance_losses,
    )
    return None
