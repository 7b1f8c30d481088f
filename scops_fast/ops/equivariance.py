"""Fused equivariance losses (SPEC section 7). `scops_fast::equivariance` returns the
per-image KL sums and the part moments of softmax(pred_tps) and softmax(warp(pred));
the losses follow from those small tensors. It also returns warp(pred), which its
backward reuses instead of sampling again. As in SCOPS, the KL target is detached:
the op sends no KL gradient to pred."""

import torch

_backward_op = torch.ops.scops_fast.equivariance_backward


@torch.library.register_fake("scops_fast::equivariance")
def _(pred, pred_tps, mapping, border):
    b, k = pred.shape[0], pred.shape[1] - 1
    f64 = torch.float64
    return (
        pred.new_empty((b,), dtype=f64),
        pred.new_empty((b, k, 3), dtype=f64),
        pred.new_empty((b, k, 3), dtype=f64),
        torch.empty_like(pred, memory_format=torch.contiguous_format),
    )


@torch.library.register_fake("scops_fast::equivariance_backward")
def _(pred, warped, pred_tps, mapping, border, g_kl, g_tps, g_warp):
    fmt = torch.contiguous_format
    return torch.empty_like(pred, memory_format=fmt), torch.empty_like(pred, memory_format=fmt)


def _setup(ctx, inputs, output):
    pred, pred_tps, mapping, border = inputs
    ctx.save_for_backward(pred, output[3], pred_tps, mapping)
    ctx.border = border


def _backward(ctx, g_kl, g_tps, g_warp, _g_warped):
    pred, warped, pred_tps, mapping = ctx.saved_tensors
    kl_shape = (pred.shape[0],)
    mom_shape = (pred.shape[0], pred.shape[1] - 1, 3)
    f64 = dict(dtype=torch.float64, device=pred.device)
    g_kl = torch.zeros(kl_shape, **f64) if g_kl is None else g_kl
    g_tps = torch.zeros(mom_shape, **f64) if g_tps is None else g_tps
    g_warp = torch.zeros(mom_shape, **f64) if g_warp is None else g_warp
    grad_pred, grad_tps = _backward_op(
        pred, warped, pred_tps, mapping, ctx.border, g_kl, g_tps, g_warp
    )
    return grad_pred, grad_tps, None, None


torch.library.register_autograd("scops_fast::equivariance", _backward, setup_context=_setup)
