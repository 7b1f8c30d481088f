"""`scops_fast::softmax_moments`: the per-(b, k) moments behind the concentration loss
and part centres (SPEC sections 2-3), in one pass over the logits."""

import torch

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
