"""Semantic consistency (SPEC section 4), dense and low-resolution.

Both ops return the loss *sum* and, when gradients are needed, its gradients from the
same pass (the dense one reads the (B, C, H, W) features exactly once); the autograd
backward only scales them. The losses are composed in `scops_fast.ops.compose`.
"""

import torch

from scops_fast.triton_kernels import semantic as kernels
from scops_fast.triton_ops import on_device


@torch.library.custom_op("scops_fast_triton::semantic_dense", mutates_args=())
def semantic_dense(
    features: torch.Tensor, pred: torch.Tensor, basis: torch.Tensor, grads: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = pred.dtype
    with on_device(pred):
        return kernels.semantic_dense(
            features.to(dtype).contiguous(), pred.contiguous(), basis.to(dtype).contiguous(), grads
        )


@semantic_dense.register_fake
def _(features, pred, basis, grads):
    loss = pred.new_empty((), dtype=torch.float64)
    if not grads:
        return loss, pred.new_empty((0,)), pred.new_empty((0, basis.shape[1]))
    return (
        loss,
        torch.empty_like(pred, memory_format=torch.contiguous_format),
        torch.empty_like(basis, dtype=pred.dtype),
    )


def _dense_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])


def _dense_backward(ctx, g_loss, _g1, _g2):
    grad_pred, grad_basis = ctx.saved_tensors
    g = g_loss.to(grad_pred.dtype)
    return None, g * grad_pred, g * grad_basis, None


semantic_dense.register_autograd(_dense_backward, setup_context=_dense_setup)


@torch.library.custom_op("scops_fast_triton::semantic_lowres", mutates_args=())
def semantic_lowres(
    pred: torch.Tensor,
    lowres: torch.Tensor,
    gram_basis: torch.Tensor,
    gram: torch.Tensor,
    saliency: torch.Tensor | None,
    grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = pred.dtype

    def prepared(t):
        return None if t is None else t.to(dtype).contiguous()

    with on_device(pred):
        return kernels.semantic_lowres(
            pred.contiguous(),
            prepared(lowres),
            prepared(gram_basis),
            prepared(gram),
            prepared(saliency),
            grads,
        )


@semantic_lowres.register_fake
def _(pred, lowres, gram_basis, gram, saliency, grads):
    loss = pred.new_empty((), dtype=torch.float64)
    if not grads:
        return loss, pred.new_empty((0,)), pred.new_empty((0,)), pred.new_empty((0,))
    fmt = torch.contiguous_format
    return (
        loss,
        torch.empty_like(pred, memory_format=fmt),
        torch.empty_like(lowres, dtype=pred.dtype, memory_format=fmt),
        torch.empty_like(gram_basis, dtype=pred.dtype, memory_format=fmt),
    )


def _lowres_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2], output[3])


def _lowres_backward(ctx, g_loss, _g1, _g2, _g3):
    grad_pred, grad_lowres, grad_gram = ctx.saved_tensors
    g = g_loss.to(grad_pred.dtype)
    return g * grad_pred, g * grad_lowres, g * grad_gram, None, None, None


semantic_lowres.register_autograd(_lowres_backward, setup_context=_lowres_setup)
