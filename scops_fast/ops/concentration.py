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
    ctx.mark_non_differentiable(output[1], output[2])
    # Otherwise autograd fills a zero gradient for the unused outputs, one of them as
    # large as the logits.
    ctx.set_materialize_grads(False)
    ctx.compiled = torch.compiler.is_compiling()
    if ctx.compiled:
        ctx.save_for_backward(output[2])
    else:
        # The gradient is handed to the first backward, which scales it in place and
        # returns it: no copy, and nothing else holds it then. A retained graph's later
        # backwards form it again from the logits.
        ctx.save_for_backward(inputs[0])
        ctx.grad = output[2]


def _loss_backward(ctx, grad_loss, _grad_moments, _grad_grad):
    if grad_loss is None:  # gradients are not materialised: no gradient reached the loss
        return None, None
    if ctx.compiled:
        (grad,) = ctx.saved_tensors
        if grad.numel() == 0:
            raise RuntimeError(
                "scops_fast::concentration ran with with_grad=False, so it has no gradient"
            )
        return grad * grad_loss, None
    grad, ctx.grad = ctx.grad, None
    if grad is None or grad.numel() == 0:  # handed over already, or never formed
        (x,) = ctx.saved_tensors
        grad = torch.ops.scops_fast.concentration(x, True)[2]
    # A loss backpropagated on its own gets exactly 1: the gradient is then the answer.
    if grad_loss.item() != 1.0:
        grad.mul_(grad_loss)
    return grad, None


torch.library.register_autograd(
    "scops_fast::concentration", _loss_backward, setup_context=_setup_loss
)
