"""Grid-free TPS warp (SPEC section 6): `scops_fast::tps_warp` evaluates the spline per
output pixel from the (B, 28, 2) coefficients. Gradients flow to the warped tensor;
the source points are treated as constants (SCOPS draws them at random)."""

import torch

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
