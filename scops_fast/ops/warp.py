"""Warp family (SPEC section 6): the grid-free TPS warp `tps_warp(x, mapping, border)`
evaluates the spline per output pixel from the (B, 28, 2) coefficients and samples x
bilinearly; `tps_warp_backward` scatters the adjoint. Gradients flow to the warped
tensor; the source points are constants (SCOPS draws them at random)."""

import torch

from scops_fast.ops import TRITON, register_autograd
from scops_fast.ops.compose import contiguous_like, spline_mapping, working_dtype


@torch.library.custom_op(f"{TRITON}::tps_warp", mutates_args=())
def _triton_warp(x: torch.Tensor, mapping: torch.Tensor, border: bool) -> torch.Tensor:
    from scops_fast.triton_kernels import on_device
    from scops_fast.triton_kernels import warp as kernels

    with on_device(x):
        return kernels.warp_forward(x.contiguous(), mapping.to(torch.float64).contiguous(), border)


@torch.library.custom_op(f"{TRITON}::tps_warp_backward", mutates_args=())
def _triton_warp_backward(
    grad_out: torch.Tensor, mapping: torch.Tensor, border: bool
) -> torch.Tensor:
    from scops_fast.triton_kernels import on_device
    from scops_fast.triton_kernels import warp as kernels

    m = mapping.to(torch.float64).contiguous()
    with on_device(grad_out):
        return kernels.warp_backward(grad_out.contiguous(), m, border)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.border = inputs[2]


def _backward_rule(namespace):
    def backward(ctx, grad):
        (mapping,) = ctx.saved_tensors
        op = getattr(torch.ops, namespace).tps_warp_backward
        return op(grad, mapping, ctx.border), None, None

    return backward


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::tps_warp", contiguous_like)
    torch.library.register_fake(f"{namespace}::tps_warp_backward", contiguous_like)
    register_autograd(f"{namespace}::tps_warp", _backward_rule(namespace), setup_context=_setup)


def public_ops(k) -> dict:
    """The family's public ops on the primitives `k` (compose.Primitives)."""

    def tps_warp(x, source_points, padding_mode="zeros"):
        out = k.tps_warp(
            x.to(working_dtype(x)), spline_mapping(source_points), padding_mode == "border"
        )
        return out.to(x.dtype)

    return {"tps_warp": tps_warp}
