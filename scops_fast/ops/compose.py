"""The SPEC losses composed from the kernel primitives, for every compiled backend ("cpp"
and "cuda" through the `scops_fast::` ops, "triton" through `scops_fast_triton::`,
"cuda_emu" through `scops_fast_cuda_emu::`): the helpers the families' `public_ops` share,
and `losses_from`, which collects them. The kernels return small per-(b, k) statistics or
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


def contiguous_like(t: torch.Tensor, *_) -> torch.Tensor:
    """The fake of a kernel output shaped as its first input: the kernels write contiguous
    tensors whatever the input's layout."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


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
    """{public op name: implementation} built on the primitives of `namespace`: each op
    family (scops_fast/ops/<family>.py) composes its own public ops in `public_ops`."""
    from scops_fast import ops

    k = Primitives(namespace, concentration_devices)
    out = {}
    for name in ops.FAMILIES:
        out.update(ops.family(name).public_ops(k))
    return out
