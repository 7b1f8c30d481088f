"""Semantic consistency (SPEC section 4), dense and low-resolution.

Both ops return the loss *sum* and, when gradients are needed, its gradients from the
same pass (the dense one reads the (B, C, H, W) features exactly once); the autograd
backward only scales them. The composition is that of `scops_fast.ops.semantic`.
"""

import torch
import torch.nn.functional as F

from scops_fast.ops import working_dtype
from scops_fast.triton_kernels import semantic as kernels
from scops_fast.triton_ops import on_device


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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


def semantic_consistency_loss(features, pred, basis):
    dtype = working_dtype(pred)
    pred_w, basis_w = pred.to(dtype), basis.to(dtype)
    total, _, _ = semantic_dense(
        features.detach().to(dtype), pred_w, basis_w, _needs_grad(pred, basis)
    )
    return (total / features.numel()).to(pred.dtype)


def neighbour_gram(v: torch.Tensor) -> torch.Tensor:
    """(B, 5, h, w) inner products of each low-resolution feature vector with its right,
    lower and lower-right neighbours (and right with lower), clamped at the edges: all
    that |U V|^2 needs at any full-resolution pixel (as `scops_fast.ops.semantic`, which
    cannot be imported without the cpp library)."""
    padded = F.pad(v, (0, 1, 0, 1), mode="replicate")
    right, down, diag = padded[:, :, :-1, 1:], padded[:, :, 1:, :-1], padded[:, :, 1:, 1:]
    pairs = ((v, v), (v, right), (v, down), (v, diag), (right, down))
    return torch.stack([(a * b).sum(1) for a, b in pairs], dim=1)


def semantic_consistency_loss_lowres(features, pred, basis, saliency=None):
    dtype = working_dtype(pred)
    pred_w, basis_w = pred.to(dtype), basis.to(dtype)
    sal = None if saliency is None else saliency.detach().to(dtype)
    grads = _needs_grad(pred, basis)
    # Maps of one low-resolution size share a pass; the loss is a sum over channels,
    # so each size contributes its own terms with its own slice of the basis.
    groups: dict[tuple, list] = {}
    start = 0
    for f in features:
        groups.setdefault(tuple(f.shape[2:]), []).append((f, start))
        start += f.shape[1]
    total = 0.0
    for members in groups.values():
        v = torch.cat([f.detach().to(dtype) for f, _ in members], dim=1)
        w = torch.cat([basis_w[:, s : s + f.shape[1]] for f, s in members], dim=1)
        lowres = torch.einsum("kc,bchw->bkhw", w, v)
        loss, _, _, _ = semantic_lowres(pred_w, lowres, w @ w.t(), neighbour_gram(v), sal, grads)
        total = total + loss
    count = pred.shape[0] * start * pred.shape[2] * pred.shape[3]
    return (total / count).to(pred.dtype)
