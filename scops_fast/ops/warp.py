"""Grid-free TPS warp (SPEC section 6): `scops_fast::tps_warp` evaluates the spline per
output pixel from the (B, 28, 2) coefficients. Gradients flow to the warped tensor;
the source points are treated as constants (SCOPS draws them at random)."""

import torch

from scops_fast import reference
from scops_fast.ops import working_dtype

_warp = torch.ops.scops_fast.tps_warp
_warp_backward = torch.ops.scops_fast.tps_warp_backward


@torch.library.register_fake("scops_fast::tps_warp")
def _(x, mapping, border):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("scops_fast::tps_warp_backward")
def _(grad_out, mapping, border):
    return torch.empty_like(grad_out, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.border = inputs[2]


def _backward(ctx, grad):
    (mapping,) = ctx.saved_tensors
    return _warp_backward(grad, mapping, ctx.border), None, None


torch.library.register_autograd("scops_fast::tps_warp", _backward, setup_context=_setup)


def spline_mapping(source_points):
    return reference.tps_mapping(source_points.detach())


def tps_warp(x, source_points, padding_mode="zeros"):
    out = _warp(x.to(working_dtype(x)), spline_mapping(source_points), padding_mode == "border")
    return out.to(x.dtype)
