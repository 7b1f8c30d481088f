"""Fused equivariance losses (SPEC section 7). `scops_fast_triton::equivariance` returns
the per-image KL sums and the part moments of softmax(pred_tps) and softmax(warp(pred));
the losses follow from those small tensors. As in SCOPS the KL target is detached: the op
sends no KL gradient to pred."""

import torch

from scops_fast.triton_kernels import equivariance as kernels
from scops_fast.triton_ops import on_device


@torch.library.custom_op("scops_fast_triton::equivariance", mutates_args=())
def equivariance(
    pred: torch.Tensor, pred_tps: torch.Tensor, mapping: torch.Tensor, border: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kl (B,), mom_tps (B, K, 3), mom_warp (B, K, 3)), float64."""
    with on_device(pred):
        kl, mom_tps, mom_warp = kernels.equivariance_forward(
            pred.contiguous(),
            pred_tps.to(pred.dtype).contiguous(),
            mapping.to(torch.float64).contiguous(),
            border,
        )
    # Parts only, and separate tensors: a custom op's outputs may not share storage.
    return kl, mom_tps[:, 1:].clone(), mom_warp[:, 1:].clone()


@equivariance.register_fake
def _(pred, pred_tps, mapping, border):
    b, k = pred.shape[0], pred.shape[1] - 1
    f64 = torch.float64
    return (
        pred.new_empty((b,), dtype=f64),
        pred.new_empty((b, k, 3), dtype=f64),
        pred.new_empty((b, k, 3), dtype=f64),
    )


@torch.library.custom_op("scops_fast_triton::equivariance_backward", mutates_args=())
def equivariance_backward(
    pred: torch.Tensor,
    pred_tps: torch.Tensor,
    mapping: torch.Tensor,
    border: bool,
    g_kl: torch.Tensor,
    g_tps: torch.Tensor,
    g_warp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    def with_background(g):  # zero upstream gradient for the background's moments
        g = g.to(torch.float64)
        return torch.cat((g.new_zeros((g.shape[0], 1, 3)), g), dim=1).contiguous()

    with on_device(pred):
        return kernels.equivariance_backward(
            pred.contiguous(),
            pred_tps.to(pred.dtype).contiguous(),
            mapping.to(torch.float64).contiguous(),
            border,
            g_kl.to(torch.float64).contiguous(),
            with_background(g_tps),
            with_background(g_warp),
        )


@equivariance_backward.register_fake
def _(pred, pred_tps, mapping, border, g_kl, g_tps, g_warp):
    fmt = torch.contiguous_format
    return torch.empty_like(pred, memory_format=fmt), torch.empty_like(pred, memory_format=fmt)


def _setup(ctx, inputs, output):
    pred, pred_tps, mapping, border = inputs
    ctx.save_for_backward(pred, pred_tps, mapping)
    ctx.border = border


def _backward(ctx, g_kl, g_tps, g_warp):
    pred, pred_tps, mapping = ctx.saved_tensors
    b, k = pred.shape[0], pred.shape[1] - 1
    f64 = dict(dtype=torch.float64, device=pred.device)
    g_kl = torch.zeros((b,), **f64) if g_kl is None else g_kl
    g_tps = torch.zeros((b, k, 3), **f64) if g_tps is None else g_tps
    g_warp = torch.zeros((b, k, 3), **f64) if g_warp is None else g_warp
    grad_pred, grad_tps = equivariance_backward(
        pred, pred_tps, mapping, ctx.border, g_kl, g_tps, g_warp
    )
    return grad_pred, grad_tps.to(pred_tps.dtype), None, None


equivariance.register_autograd(_backward, setup_context=_setup)
