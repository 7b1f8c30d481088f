"""Grid-free TPS warp (SPEC section 6): each output pixel's sampling position comes from
the (B, 28, 2) spline coefficients and its own 25 radial terms, then bilinear sampling
(align_corners=True, zeros or border padding). No (B, H, W, 2) grid is stored.

Grid (pixel blocks, B). A program computes the corners of its pixels once and loops over
the channels, so the spline is evaluated once per pixel whatever C is; per channel the
loop then gathers 4 values and writes 1."""

import torch
import triton
import triton.language as tl

from scops_fast.triton_kernels import BLOCKS, batch_runs
from scops_fast.triton_kernels.common import warp_corners
from scops_fast.triton_kernels.fixed import (
    accumulators,
    count_nonfinite,
    from_fixed,
    scale_for,
    to_fixed,
)


@triton.jit
def warp_forward_kernel(
    x_ptr, m_ptr, out_ptr, C, H, W, BORDER: tl.constexpr, BLOCK_P: tl.constexpr
):
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < hw
    DT: tl.constexpr = x_ptr.dtype.element_ty
    o00, o01, o10, o11, w00, w01, w10, w11, v00, v01, v10, v11 = warp_corners(
        m_ptr + b * 56, p, H, W, BORDER, DT
    )
    v00 &= pm
    v01 &= pm
    v10 &= pm
    v11 &= pm
    for c in range(C):
        plane = x_ptr + (b * C + c) * hw
        value = w00 * tl.load(plane + o00, mask=v00, other=0.0)
        value += w01 * tl.load(plane + o01, mask=v01, other=0.0)
        value += w10 * tl.load(plane + o10, mask=v10, other=0.0)
        value += w11 * tl.load(plane + o11, mask=v11, other=0.0)
        tl.store(out_ptr + (b * C + c) * hw + p, value, mask=pm)


@triton.jit
def warp_backward_kernel(
    g_ptr, m_ptr, sc_ptr, acc_ptr, bad_ptr, C, H, W, BORDER: tl.constexpr, BLOCK_P: tl.constexpr
):
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < hw
    DT: tl.constexpr = g_ptr.dtype.element_ty
    o00, o01, o10, o11, w00, w01, w10, w11, v00, v01, v10, v11 = warp_corners(
        m_ptr + b * 56, p, H, W, BORDER, DT
    )
    v00 &= pm
    v01 &= pm
    v10 &= pm
    v11 &= pm
    scale = tl.load(sc_ptr)
    for c in range(C):
        g = tl.load(g_ptr + (b * C + c) * hw + p, mask=pm, other=0.0)
        count_nonfinite(g[None, :], pm[None, :], bad_ptr)
        plane = acc_ptr + (b * C + c) * hw
        # Integer atomics: exact, so the order they land in does not matter (fixed.py).
        tl.atomic_add(plane + o00, to_fixed(w00 * g, scale), mask=v00, sem="relaxed")
        tl.atomic_add(plane + o01, to_fixed(w01 * g, scale), mask=v01, sem="relaxed")
        tl.atomic_add(plane + o10, to_fixed(w10 * g, scale), mask=v10, sem="relaxed")
        tl.atomic_add(plane + o11, to_fixed(w11 * g, scale), mask=v11, sem="relaxed")


def _launches(x):
    """(images, grid, launch options) of each launch over x (B, C, H, W)."""
    b, _, h, w = x.shape
    block = BLOCKS["warp_pixels"]
    blocks = dict(BLOCK_P=block, num_warps=BLOCKS["warps"])
    for start, stop in batch_runs(b):
        yield slice(start, stop), (triton.cdiv(h * w, block), stop - start), blocks


def warp_forward(x: torch.Tensor, mapping: torch.Tensor, border: bool) -> torch.Tensor:
    """x (B, C, H, W) contiguous, mapping (B, 28, 2) float64 contiguous."""
    _, c, h, w = x.shape
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    for i, grid, blocks in _launches(x):
        warp_forward_kernel[grid](x[i], mapping[i], out[i], c, h, w, BORDER=border, **blocks)
    return out


def warp_backward(grad: torch.Tensor, mapping: torch.Tensor, border: bool) -> torch.Tensor:
    """Adjoint of `warp_forward` w.r.t. x, applied to grad (B, C, H, W) contiguous."""
    _, c, h, w = grad.shape
    if grad.numel() == 0:  # nothing to scatter (and no maximum to scale by)
        return torch.zeros_like(grad)
    scale = scale_for(grad.abs().amax(), h * w)
    acc, bad = accumulators(grad.shape, grad.device)
    for i, grid, blocks in _launches(grad):
        warp_backward_kernel[grid](
            grad[i], mapping[i], scale, acc[i], bad, c, h, w, BORDER=border, **blocks
        )
    return from_fixed(acc, scale, bad, grad.dtype)
