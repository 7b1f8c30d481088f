"""Fake and autograd rules of the concentration ops (SPEC sections 2-3):

- `scops_fast::softmax_moments`: the per-(b, k) moments behind the part centres and the
  concentration loss, in one pass over the logits; its backward is a second pass.
- `scops_fast::concentration`: the whole concentration loss, whose gradient the kernel
  forms in the forward while the softmax is in cache; the backward only scales it.
  CPU kernels only: CUDA and Triton compose the loss from `softmax_moments`.
"""

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


@torch.library.register_fake("scops_fast::scaled")
def _(grad, scale):
    return torch.empty_like(grad)


@torch.library.register_fake("scops_fast::concentration")
def _(x, with_grad):
    moments = x.new_empty((x.shape[0], x.shape[1] - 1, 4), dtype=torch.float64)
    grad = (
        torch.empty_like(x, memory_format=torch.contiguous_format)
        if with_grad
        else x.new_empty((0,))
    )
    return x.new_empty((), dtype=torch.float64), moments, grad


def _setup_loss(ctx, inputs, output):
    ctx.save_for_backward(output[2])
    ctx.mark_non_differentiable(output[1], output[2])
    # Otherwise autograd fills a zero gradient for the unused outputs, one of them as
    # large as the logits.
    ctx.set_materialize_grads(False)


def _loss_backward(ctx, grad_loss, _grad_moments, _grad_grad):
    if grad_loss is None:  # gradients are not materialised: no gradient reached the loss
        return None, None
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0:
        raise RuntimeError(
            "scops_fast::concentration ran with with_grad=False, so it has no gradient to give"
        )
    if torch.compiler.is_compiling():
        return grad * grad_loss, None
    # A loss backpropagated on its own gets exactly 1: the kernel's gradient is then the
    # answer, and scaling it would be one more pass over the whole map.
    if grad_loss.item() == 1.0:
        return grad, None
    return torch.ops.scops_fast.scaled(grad, grad_loss), None


torch.library.register_autograd(
    "scops_fast::concentration", _loss_backward, setup_context=_setup_loss
)
