"""The SPEC losses composed from five kernel primitives, shared by every compiled
backend ("cpp" and "cuda" through the `scops_fast::` ops, "triton" through
`scops_fast_triton::`). The kernels return small per-(b, k) statistics or
loss sums; the few tensor operations here turn them into the losses, and autograd
carries gradients back through the kernels' registered backward rules.

Primitives (each a differentiable custom op):
- softmax_moments(x, from_logits) -> (B, K, 4) float64 sums of (P + 1e-3)(1, x, y, x^2+y^2)
- concentration(x, with_grad) -> (loss, moments, gradient), optional: the whole
  concentration loss in one op, where a backend has it (CPU kernels only)
- tps_warp(x, mapping, border) -> warped x
- equivariance(pred, pred_tps, mapping, border) -> (kl (B,), mom_tps, mom_warp, warped)
- semantic_dense(features, pred, basis, grads) -> (loss sum, ...)
- semantic_lowres(pred, A, G, gram, saliency, grads) -> (loss sum, ...)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scops_fast import reference

NATIVE_DTYPES = (torch.float32, torch.float64)


def working_dtype(t: torch.Tensor) -> torch.dtype:
    """Kernels run in float32 or float64; half-precision inputs accumulate in float32."""
    return t.dtype if t.dtype in NATIVE_DTYPES else torch.float32


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def centers_from_moments(moments: torch.Tensor) -> torch.Tensor:
    """(B, K, >=3) sums of m * (1, x, y, ...) -> centres (B, K, 2)."""
    return moments[..., 1:3] / moments[..., :1]


def spline_mapping(source_points: torch.Tensor) -> torch.Tensor:
    """(B, 28, 2) spline coefficients; the source points are constants to the kernels
    (SCOPS draws them at random), so no gradient reaches them."""
    return reference.tps_mapping(source_points.detach())


def neighbour_gram(v: torch.Tensor) -> torch.Tensor:
    """(B, 5, h, w) inner products of each low-resolution feature vector with its right,
    lower and lower-right neighbours (and right with lower), clamped at the edges: all
    that |U V|^2 needs at any full-resolution pixel."""
    padded = F.pad(v, (0, 1, 0, 1), mode="replicate")
    right, down, diag = padded[:, :, :-1, 1:], padded[:, :, 1:, :-1], padded[:, :, 1:, 1:]
    pairs = ((v, v), (v, right), (v, down), (v, diag), (right, down))
    return torch.stack([(a * b).sum(1) for a, b in pairs], dim=1)


class Primitives:
    """The primitives of one op namespace, looked up when called, so that a backend's
    table can be built before its library is loaded. `concentration_devices`: device types
    on which the namespace has the fused `concentration` op."""

    def __init__(self, namespace: str, concentration_devices: tuple = ()):
        self.namespace = namespace
        self.concentration_devices = concentration_devices

    def __getattr__(self, name: str):
        return getattr(getattr(torch.ops, self.namespace), name)


def losses_from(namespace: str, concentration_devices: tuple = ()) -> dict:
    """{public op name: implementation} built on the primitives of `namespace`."""
    k = Primitives(namespace, concentration_devices)

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

    def tps_warp(x, source_points, padding_mode="zeros"):
        out = k.tps_warp(
            x.to(working_dtype(x)), spline_mapping(source_points), padding_mode == "border"
        )
        return out.to(x.dtype)

    def equivariance_losses(pred, pred_tps, source_points, padding_mode="zeros"):
        dtype = working_dtype(pred)
        kl, mom_tps, mom_warp = k.equivariance(
            pred.to(dtype),
            pred_tps.to(dtype),
            spline_mapping(source_points),
            padding_mode == "border",
        )[:3]
        loss_eqv = kl.sum() / pred.numel()
        diff = centers_from_moments(mom_tps) - centers_from_moments(mom_warp)
        loss_lmeqv = (diff * diff).mean()
        return loss_eqv.to(pred.dtype), loss_lmeqv.to(pred.dtype)

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
        "batch_get_centers": batch_get_centers,
        "concentration_loss": concentration_loss,
        "semantic_consistency_loss": semantic_consistency_loss,
        "semantic_consistency_loss_lowres": semantic_consistency_loss_lowres,
        "tps_warp": tps_warp,
        "equivariance_losses": equivariance_losses,
    }
