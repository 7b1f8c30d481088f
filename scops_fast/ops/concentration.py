"""Concentration loss and part centres (SPEC sections 2-3) from the per-(b, k) moments
that `scops_fast::softmax_moments` computes in one pass over the logits."""

import torch

from scops_fast.ops import working_dtype

_moments = torch.ops.scops_fast.softmax_moments
_moments_backward = torch.ops.scops_fast.softmax_moments_backward


@torch.library.register_fake("scops_fast::softmax_moments")
def _(x, from_logits):
    parts = x.shape[1] - 1 if from_logits else x.shape[1]
    return x.new_empty((x.shape[0], parts, 4), dtype=torch.float64)


@torch.library.register_fake("scops_fast::softmax_moments_backward")
def _(x, grad_moments, from_logits):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.from_logits = inputs[1]


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _moments_backward(x, grad, ctx.from_logits), None


torch.library.register_autograd("scops_fast::softmax_moments", _backward, setup_context=_setup)


def centers_from_moments(moments: torch.Tensor) -> torch.Tensor:
    """(B, K, >=3) sums of m * (1, x, y, ...) -> centres (B, K, 2)."""
    return moments[..., 1:3] / moments[..., :1]


def concentration_loss(pred):
    x = pred.to(working_dtype(pred))
    moments = _moments(x, True)
    mass = moments[..., 0]
    center = centers_from_moments(moments)
    spread = moments[..., 3] / mass - (center * center).sum(-1)
    batch = pred.shape[0]
    return (spread.sum() / (batch * batch)).to(pred.dtype)


def batch_get_centers(part_probs):
    x = part_probs.to(working_dtype(part_probs))
    return centers_from_moments(_moments(x, False)).to(part_probs.dtype)
