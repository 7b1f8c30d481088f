"""Fake (meta) implementations and autograd rules of the two semantic primitives,
shared by every backend namespace (`scops_fast::`, `scops_fast_triton::`): both ops
return the loss sum and, when `grads` is set, its gradients from the same pass, so
the backward only scales what the forward already computed."""

import torch


def dense_fake(features, pred, basis, grads):
    loss = pred.new_empty((), dtype=torch.float64)
    if not grads:
        return loss, pred.new_empty((0,)), pred.new_empty((0, basis.shape[1]))
    return (
        loss,
        torch.empty_like(pred, memory_format=torch.contiguous_format),
        torch.empty_like(basis, dtype=pred.dtype),
    )


def dense_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])


def dense_backward(ctx, g_loss, _g1, _g2):
    grad_pred, grad_basis = ctx.saved_tensors
    g = g_loss.to(grad_pred.dtype)
    return None, g * grad_pred, g * grad_basis, None


def lowres_fake(pred, lowres, gram_basis, gram, saliency, grads):
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


def lowres_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2], output[3])


def lowres_backward(ctx, g_loss, _g1, _g2, _g3):
    grad_pred, grad_lowres, grad_gram = ctx.saved_tensors
    g = g_loss.to(grad_pred.dtype)
    return g * grad_pred, g * grad_lowres, g * grad_gram, None, None, None
