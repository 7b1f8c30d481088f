"""Equivariance family (SPEC section 7): `equivariance(pred, pred_tps, mapping, border)`
returns the per-image KL sums and the part moments of softmax(pred_tps) and
softmax(warp(pred)), from which both losses follow, and `warped`: warp(pred), which the
native and CUDA backwards reuse instead of sampling again (the Triton op samples again and
returns an empty `warped`). As in SCOPS, the KL target is detached: no KL gradient reaches pred."""

import torch

from scops_fast.ops import TRITON, register_autograd
from scops_fast.ops.compose import (
    centers_from_moments,
    contiguous_like,
    spline_mapping,
    working_dtype,
)

F64 = torch.float64


def _f64(g, shape, like):
    return torch.zeros(shape, dtype=F64, device=like.device) if g is None else g.to(F64)


@torch.library.custom_op(f"{TRITON}::equivariance", mutates_args=())
def _triton_equivariance(
    pred: torch.Tensor, pred_tps: torch.Tensor, mapping: torch.Tensor, border: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from scops_fast.triton_kernels import equivariance as kernels
    from scops_fast.triton_kernels import on_device

    with on_device(pred):
        kl, mom_tps, mom_warp = kernels.equivariance_forward(
            pred.contiguous(),
            pred_tps.to(pred.dtype).contiguous(),
            mapping.to(F64).contiguous(),
            border,
        )
    # Parts only, and separate tensors: a custom op's outputs may not share storage.
    return kl, mom_tps[:, 1:].clone(), mom_warp[:, 1:].clone(), pred.new_empty((0,))


@torch.library.custom_op(f"{TRITON}::equivariance_backward", mutates_args=())
def _triton_equivariance_backward(
    pred: torch.Tensor,
    warped: torch.Tensor,
    pred_tps: torch.Tensor,
    mapping: torch.Tensor,
    border: bool,
    g_kl: torch.Tensor,
    g_tps: torch.Tensor,
    g_warp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    from scops_fast.triton_kernels import equivariance as kernels
    from scops_fast.triton_kernels import on_device

    def with_background(g):  # zero upstream gradient for the background's moments
        return torch.cat((g.new_zeros((g.shape[0], 1, 3)), g.to(F64)), dim=1).contiguous()

    with on_device(pred):
        grad_pred, grad_tps = kernels.equivariance_backward(
            pred.contiguous(),
            pred_tps.to(pred.dtype).contiguous(),
            mapping.to(F64).contiguous(),
            border,
            g_kl.to(F64).contiguous(),
            with_background(g_tps),
            with_background(g_warp),
        )
    return grad_pred, grad_tps.to(pred_tps.dtype)


def _fake_rule(namespace):
    def fake(pred, pred_tps, mapping, border):
        b, k = pred.shape[0], pred.shape[1] - 1
        warped = contiguous_like(pred) if namespace != TRITON else pred.new_empty((0,))
        return (
            pred.new_empty((b,), dtype=F64),
            pred.new_empty((b, k, 3), dtype=F64),
            pred.new_empty((b, k, 3), dtype=F64),
            warped,
        )

    return fake


def _backward_fake(pred, *_):
    return contiguous_like(pred), contiguous_like(pred)


def _setup(ctx, inputs, output):
    pred, pred_tps, mapping, border = inputs
    ctx.save_for_backward(pred, output[3], pred_tps, mapping)
    ctx.border = border


def _backward_rule(namespace):
    def backward(ctx, g_kl, g_tps, g_warp, _g_warped):
        pred, warped, pred_tps, mapping = ctx.saved_tensors
        b, k = pred.shape[0], pred.shape[1] - 1
        op = getattr(torch.ops, namespace).equivariance_backward
        grad_pred, grad_tps = op(
            pred,
            warped,
            pred_tps,
            mapping,
            ctx.border,
            _f64(g_kl, (b,), pred),
            _f64(g_tps, (b, k, 3), pred),
            _f64(g_warp, (b, k, 3), pred),
        )
        return grad_pred, grad_tps, None, None

    return backward


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::equivariance", _fake_rule(namespace))
    torch.library.register_fake(f"{namespace}::equivariance_backward", _backward_fake)
    register_autograd(f"{namespace}::equivariance", _backward_rule(namespace), setup_context=_setup)


def public_ops(k) -> dict:
    """The family's public ops on the primitives `k` (compose.Primitives)."""

    def equivariance_losses(pred, pred_tps, source_points, padding_mode="zeros"):
        dtype = working_dtype(pred)
        kl, mom_tps, mom_warp = k.equivariance(
            pred.to(dtype),
            pred_tps.to(dtype),
            spline_mapping(source_points),
            padding_mode == "border",
        )[:3]
        loss_eqv = kl.sum() / pred.numel()
        diff = centers_from_moments(mom_tps) - centers_from_moments(mom_warp)
        loss_lmeqv = (diff * diff).mean()
        return loss_eqv.to(pred.dtype), loss_lmeqv.to(pred.dtype)

    return {"equivariance_losses": equivariance_losses}
