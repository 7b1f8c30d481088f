"""Concentration family (SPEC sections 2-3): per-(b, k) moments of the softmax, from which
the part centres and the concentration loss follow.

- `softmax_moments(x, from_logits)` -> (B, parts, 4) float64 sums of
  (P + 1e-3) * (1, x, y, x^2 + y^2), parts = C - 1 from logits (background dropped), C from
  probabilities; its backward `softmax_moments_backward` is a second pass over x.
- `concentration(x, with_grad)` (native CPU kernels only) -> (loss, moments, gradient):
  the whole loss, whose gradient the kernel forms in the forward while the softmax is in
  cache; the backward only scales it. CUDA and Triton compose the loss from the moments.
"""

import torch

from scops_fast.ops import NATIVE, TRITON, register_autograd, tracing
from scops_fast.ops.compose import (
    centers_from_moments,
    contiguous_like,
    needs_grad,
    working_dtype,
)


@torch.library.custom_op(f"{TRITON}::softmax_moments", mutates_args=())
def _triton_moments(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    from scops_fast.triton_kernels import moments as kernels
    from scops_fast.triton_kernels import on_device

    with on_device(x):
        moments = kernels.moments_forward(x.contiguous(), from_logits)
    return moments[:, 1:].contiguous() if from_logits else moments


@torch.library.custom_op(f"{TRITON}::softmax_moments_backward", mutates_args=())
def _triton_moments_backward(
    x: torch.Tensor, grad_moments: torch.Tensor, from_logits: bool
) -> torch.Tensor:
    from scops_fast.triton_kernels import moments as kernels
    from scops_fast.triton_kernels import on_device

    grad = grad_moments.to(torch.float64)
    if from_logits:  # the background channel has no moments: zero upstream gradient
        grad = torch.cat((grad.new_zeros((grad.shape[0], 1, 4)), grad), dim=1)
    with on_device(x):
        return kernels.moments_backward(x.contiguous(), grad.contiguous(), from_logits)


def _moments_fake(x, from_logits):
    parts = x.shape[1] - 1 if from_logits else x.shape[1]
    return x.new_empty((x.shape[0], parts, 4), dtype=torch.float64)


def _moments_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.from_logits = inputs[1]


def _moments_backward_rule(namespace):
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        op = getattr(torch.ops, namespace).softmax_moments_backward
        return op(x, grad, ctx.from_logits), None

    return backward


def _loss_fake(x, with_grad):
    moments = x.new_empty((x.shape[0], x.shape[1] - 1, 4), dtype=torch.float64)
    grad = contiguous_like(x) if with_grad else x.new_empty((0,))
    return x.new_empty((), dtype=torch.float64), moments, grad


def _loss_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    # Otherwise autograd fills a zero gradient for the unused outputs, one of them as
    # large as the logits.
    ctx.set_materialize_grads(False)
    ctx.compiled = tracing()
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
    try:
        unit = grad_loss.item() == 1.0
    except RuntimeError:  # batched (autograd.grad's is_grads_batched): no single value
        return grad * grad_loss, None
    if not unit:
        grad.mul_(grad_loss)
    return grad, None


def register(namespace: str) -> None:
    lib = torch.library
    lib.register_fake(f"{namespace}::softmax_moments", _moments_fake)
    lib.register_fake(f"{namespace}::softmax_moments_backward", contiguous_like)
    register_autograd(
        f"{namespace}::softmax_moments",
        _moments_backward_rule(namespace),
        setup_context=_moments_setup,
    )
    if namespace == NATIVE:
        lib.register_fake(f"{NATIVE}::concentration", _loss_fake)
        register_autograd(f"{NATIVE}::concentration", _loss_backward, setup_context=_loss_setup)


def public_ops(k) -> dict:
    """The family's public ops on the primitives `k` (compose.Primitives)."""

    def concentration_loss(pred):
        x = pred.to(working_dtype(pred))
        if pred.device.type in k.concentration_devices:
            return k.concentration(x, needs_grad(x))[0].to(pred.dtype)
        moments = k.softmax_moments(x, True)
        center = centers_from_moments(moments)
        # SPEC section 3: sum pdf |p - c|^2 = sum pdf (x^2 + y^2) - |c|^2.
        spread = moments[..., 3] / moments[..., 0] - (center * center).sum(-1)
        batch = pred.shape[0]
        return (spread.sum() / (batch * batch)).to(pred.dtype)

    def batch_get_centers(part_probs):
        x = part_probs.to(working_dtype(part_probs))
        return centers_from_moments(k.softmax_moments(x, False)).to(part_probs.dtype)

    return {"concentration_loss": concentration_loss, "batch_get_centers": batch_get_centers}
