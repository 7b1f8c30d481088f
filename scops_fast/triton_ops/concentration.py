"""Concentration loss and part centres (SPEC sections 2-3) from the per-(b, k) moments
of `scops_fast_triton::softmax_moments`."""

import torch

from scops_fast.triton_kernels import moments as kernels
from scops_fast.triton_ops import on_device


@torch.library.custom_op("scops_fast_triton::softmax_moments", mutates_args=())
def softmax_moments(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, parts, 4) float64 sums of (P + 1e-3) * (1, x, y, x^2 + y^2),
    parts = C - 1 from logits (background dropped), C from probabilities."""
    with on_device(x):
        moments = kernels.moments_forward(x.contiguous(), from_logits)
    return moments[:, 1:].contiguous() if from_logits else moments


@softmax_moments.register_fake
def _(x, from_logits):
    parts = x.shape[1] - 1 if from_logits else x.shape[1]
    return x.new_empty((x.shape[0], parts, 4), dtype=torch.float64)


@torch.library.custom_op("scops_fast_triton::softmax_moments_backward", mutates_args=())
def softmax_moments_backward(
    x: torch.Tensor, grad_moments: torch.Tensor, from_logits: bool
) -> torch.Tensor:
    grad = grad_moments.to(torch.float64)
    if from_logits:  # the background channel has no moments: zero upstream gradient
        grad = torch.cat((grad.new_zeros((grad.shape[0], 1, 4)), grad), dim=1)
    with on_device(x):
        return kernels.moments_backward(x.contiguous(), grad.contiguous(), from_logits)


@softmax_moments_backward.register_fake
def _(x, grad_moments, from_logits):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.from_logits = inputs[1]


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return softmax_moments_backward(x, grad, ctx.from_logits), None


softmax_moments.register_autograd(_backward, setup_context=_setup)
