"""Semantic family (SPEC section 4), dense and low-resolution:

- `semantic_dense(features, pred, basis, grads)` -> (loss sum, d/d pred, d/d basis);
- `semantic_lowres(pred, lowres, gram_basis, gram, saliency, grads)` -> (loss sum,
  d/d pred, d/d lowres, d/d gram_basis), with lowres = W V and the neighbour Gram
  matrices of `compose.neighbour_gram`.

Both return the loss sum and, when `grads` is set, its gradients from the same pass (the
dense one reads the (B, C, H, W) features exactly once); the backward only scales them.
"""

import torch

from scops_fast.ops import TRITON, register_autograd
from scops_fast.ops.compose import contiguous_like, needs_grad, neighbour_gram, working_dtype


@torch.library.custom_op(f"{TRITON}::semantic_dense", mutates_args=())
def _triton_dense(
    features: torch.Tensor, pred: torch.Tensor, basis: torch.Tensor, grads: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from scops_fast.triton_kernels import on_device
    from scops_fast.triton_kernels import semantic as kernels

    dtype = pred.dtype
    with on_device(pred):
        return kernels.semantic_dense(
            features.to(dtype).contiguous(), pred.contiguous(), basis.to(dtype).contiguous(), grads
        )


@torch.library.custom_op(f"{TRITON}::semantic_lowres", mutates_args=())
def _triton_lowres(
    pred: torch.Tensor,
    lowres: torch.Tensor,
    gram_basis: torch.Tensor,
    gram: torch.Tensor,
    saliency: torch.Tensor | None,
    grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from scops_fast.triton_kernels import on_device
    from scops_fast.triton_kernels import semantic as kernels

    def prepared(t):
        return None if t is None else t.to(pred.dtype).contiguous()

    with on_device(pred):
        return kernels.semantic_lowres(
            pred.contiguous(),
            prepared(lowres),
            prepared(gram_basis),
            prepared(gram),
            prepared(saliency),
            grads,
        )


def _dense_fake(features, pred, basis, grads):
    loss = pred.new_empty((), dtype=torch.float64)
    if not grads:
        return loss, pred.new_empty((0,)), pred.new_empty((0, basis.shape[1]))
    return (
        loss,
        contiguous_like(pred),
        torch.empty_like(basis, dtype=pred.dtype),
    )


def _dense_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])


def _upstream(g_loss, grad_pred):
    """g_loss in the gradients' dtype. Without a pixel (an empty batch) the gradients are
    sums over nothing, 0 whatever scales them, as the reference's: the losses' mean over no
    elements hands down an infinite g_loss, and inf * 0 would make them NaN."""
    g = g_loss.to(grad_pred.dtype)
    return torch.zeros_like(g) if grad_pred.numel() == 0 else g


def _dense_backward(ctx, g_loss, _g1, _g2):
    grad_pred, grad_basis = ctx.saved_tensors
    g = _upstream(g_loss, grad_pred)
    return None, g * grad_pred, g * grad_basis, None


def _lowres_fake(pred, lowres, gram_basis, gram, saliency, grads):
    loss = pred.new_empty((), dtype=torch.float64)
    if not grads:
        return loss, pred.new_empty((0,)), pred.new_empty((0,)), pred.new_empty((0,))
    fmt = torch.contiguous_format
    return (
        loss,
        contiguous_like(pred),
        torch.empty_like(lowres, dtype=pred.dtype, memory_format=fmt),
        torch.empty_like(gram_basis, dtype=pred.dtype, memory_format=fmt),
    )


def _lowres_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2], output[3])


def _lowres_backward(ctx, g_loss, _g1, _g2, _g3):
    grad_pred, grad_lowres, grad_gram = ctx.saved_tensors
    g = _upstream(g_loss, grad_pred)
    return g * grad_pred, g * grad_lowres, g * grad_gram, None, None, None


def register(namespace: str) -> None:
    lib = torch.library
    lib.register_fake(f"{namespace}::semantic_dense", _dense_fake)
    register_autograd(f"{namespace}::semantic_dense", _dense_backward, setup_context=_dense_setup)
    lib.register_fake(f"{namespace}::semantic_lowres", _lowres_fake)
    register_autograd(
        f"{namespace}::semantic_lowres", _lowres_backward, setup_context=_lowres_setup
    )


def public_ops(k) -> dict:
    """The family's public ops on the primitives `k` (compose.Primitives)."""

    def semantic_consistency_loss(features, pred, basis):
        dtype = working_dtype(pred)
        total = k.semantic_dense(
            features.detach().to(dtype), pred.to(dtype), basis.to(dtype), needs_grad(pred, basis)
        )[0]
        return (total / features.numel()).to(pred.dtype)

    def semantic_consistency_loss_lowres(features, pred, basis, saliency=None):
        dtype = working_dtype(pred)
        pred_w, basis_w = pred.to(dtype), basis.to(dtype)
        sal = None if saliency is None else saliency.detach().to(dtype)
        grads = needs_grad(pred, basis)
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
            # The two contractions in float64: MKL's small sgemm adds in an order that
            # depends on the thread count, so in float32 the loss's gradients changed
            # with torch.set_num_threads. Both are low-resolution and cheap.
            w64, v64 = w.double(), v.double()
            lowres = torch.einsum("kc,bchw->bkhw", w64, v64).to(dtype)
            gram_basis = (w64 @ w64.t()).to(dtype)
            total = (
                total
                + k.semantic_lowres(pred_w, lowres, gram_basis, neighbour_gram(v), sal, grads)[0]
            )
        count = pred.shape[0] * start * pred.shape[2] * pred.shape[3]
        return (total / count).to(pred.dtype)

    return {
        "semantic_consistency_loss": semantic_consistency_loss,
        "semantic_consistency_loss_lowres": semantic_consistency_loss_lowres,
    }
