"""Deterministic scatter-add through int64 fixed point.

The adjoint of a bilinear gather sends each output pixel's gradient to four input
pixels, and under a TPS warp many output pixels share corners. Floating-point atomics
would add them in a different order on every run. Alternatives considered: one program
per plane walking output pixels in order (serialises the whole image per plane and still
has duplicate corners inside one vector), an owner-computes gather (needs the inverse of
the spline, which has no closed form). Integer addition is associative, so int64 atomics
give the same bits whatever the order; the cost is one exact scaling in and out.

Scale: every addend is a weight in [0, 1] times a value bounded by `bound`, and a plane
of n output pixels hands any input pixel at most n addends' worth of weight in total, so
all partial sums lie below n * bound < 2^e. Scaling by 2^(62 - e) keeps them inside
int64 with a resolution of about n * bound * 2^-61 (2^-45 of `bound` at 256 x 256).
"""

import torch
import triton
import triton.language as tl

from scops_fast.triton_kernels import BLOCKS


def scale_for(bound: torch.Tensor, n: int) -> torch.Tensor:
    """[scale, 1 / scale] (float64, on bound's device, no host sync) for addends bounded
    by `bound` (a 0-d tensor), n per plane."""
    bound = bound.detach().to(torch.float64)
    _, e = torch.frexp(bound * n)
    e = e.clamp(-900, 900).to(torch.float64)  # bound == 0 gives e == 0: any scale works
    # A non-finite bound comes with non-finite addends, which poison the result anyway.
    scale = torch.where(torch.isfinite(bound), torch.exp2(62.0 - e), torch.ones_like(bound))
    return torch.stack((scale, 1.0 / scale))


def accumulators(shape, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed int64 sums and an int32 count of non-finite addends."""
    return (
        torch.zeros(shape, dtype=torch.int64, device=device),
        torch.zeros((1,), dtype=torch.int32, device=device),
    )


@triton.jit
def to_fixed(v, scale):
    """v * scale rounded to int64; scale is a float64 power of two, so the product is exact."""
    return tl.floor(v.to(tl.float64) * scale + 0.5).to(tl.int64)


@triton.jit
def count_nonfinite(v, mask, bad_ptr):
    """NaN and inf have no fixed-point value: count them, so that the result becomes NaN
    rather than finite garbage (integer adds, so the count is order-independent too)."""
    bad = mask & ~(tl.abs(v) < float("inf"))
    tl.atomic_add(bad_ptr, tl.sum(tl.sum(bad.to(tl.int32), 0), 0).to(tl.int32))


@triton.jit
def from_fixed_kernel(acc_ptr, sc_ptr, bad_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(acc_ptr + offs, mask=mask, other=0)
    value = acc.to(tl.float64) * tl.load(sc_ptr + 1)
    value = tl.where(tl.load(bad_ptr) > 0, float("nan"), value)
    tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=mask)


def from_fixed(acc: torch.Tensor, scale: torch.Tensor, bad: torch.Tensor, dtype) -> torch.Tensor:
    """The float sums of `acc` in `dtype`; all NaN when any addend was not finite (the
    reference would spread NaN only where it lands; training is lost either way)."""
    block = BLOCKS["elementwise"]
    out = torch.empty(acc.shape, dtype=dtype, device=acc.device)
    n = acc.numel()
    if n == 0:
        return out
    from_fixed_kernel[(triton.cdiv(n, block),)](acc, scale, bad, out, n, BLOCK=block)
    return out
