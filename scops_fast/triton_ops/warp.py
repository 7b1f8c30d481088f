"""Grid-free TPS warp (SPEC section 6) as `scops_fast_triton::tps_warp`. Gradients flow
to the warped tensor; the source points are constants (SCOPS draws them at random)."""

import torch

from scops_fast.triton_kernels import warp as kernels
from scops_fast.triton_ops import on_device


@torch.library.custom_op("scops_fast_triton::tps_warp", mutates_args=())
def tps_warp_op(x: torch.Tensor, mapping: torch.Tensor, border: bool) -> torch.Tensor:
    """x (B, C, H, W) sampled at the spline of mapping (B, 28, 2)."""
    m = mapping.to(torch.float64).contiguous()
    with on_device(x):
        return kernels.warp_forward(x.contiguous(), m, border)


@tps_warp_op.register_fake
def _(x, mapping, border):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("scops_fast_triton::tps_warp_backward", mutates_args=())
def tps_warp_backward(grad_out: torch.Tensor, mapping: torch.Tensor, border: bool) -> torch.Tensor:
    m = mapping.to(torch.float64).contiguous()
    with on_device(grad_out):
        return kernels.warp_backward(grad_out.contiguous(), m, border)


@tps_warp_backward.register_fake
def _(grad_out, mapping, border):
    return torch.empty_like(grad_out, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.border = inputs[2]


def _backward(ctx, grad):
    (mapping,) = ctx.saved_tensors
    return tps_warp_backward(grad, mapping, ctx.border), None, None


tps_warp_op.register_autograd(_backward, setup_context=_setup)
