"""Softmax part moments (SPEC sections 2-3): per (b, channel) the sums over pixels of
m * (1, x, y, x^2 + y^2), m = P + 1e-3, with P the channel softmax of logits or given
probabilities. Grid (pixel spans, B): each program walks its span in [channels, pixels]
tiles, keeps the sums in registers and writes them to its own partial slot;
`moments_forward` adds the slots in order. The backward needs no reduction: one program
per tile."""

import torch
import triton
import triton.language as tl

from scops_fast.triton_kernels import BLOCKS, batch_runs, pow2, tile_and_span
from scops_fast.triton_kernels.common import loss_coord


@triton.jit
def _tile(z_ptr, p, C, H, W, FROM_LOGITS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Probabilities of the [BLOCK_C, pixels p] tile (padded entries 0), the masks, and
    the pixels' loss coordinates."""
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    pm = p < hw
    mask = cm[:, None] & pm[None, :]
    offs = b * C * hw + c[:, None] * hw + p[None, :]
    z = tl.load(z_ptr + offs, mask=mask, other=0.0)
    DT: tl.constexpr = z_ptr.dtype.element_ty
    if FROM_LOGITS:
        # Padded channels are -inf so they take no mass; padded pixels stay finite (0).
        z = tl.where(cm[:, None], z, float("-inf"))
        e = tl.exp(z - tl.max(z, 0)[None, :])
        z = e / tl.sum(e, 0)[None, :]
    x = loss_coord(p % W, W, DT)
    y = loss_coord(p // W, H, DT)
    return z, mask, offs, x, y


@triton.jit
def moments_forward_kernel(
    z_ptr,
    part_ptr,
    C,
    H,
    W,
    span,
    FROM_LOGITS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    DT: tl.constexpr = z_ptr.dtype.element_ty
    s0 = tl.zeros([BLOCK_C], DT)
    s1 = tl.zeros([BLOCK_C], DT)
    s2 = tl.zeros([BLOCK_C], DT)
    s3 = tl.zeros([BLOCK_C], DT)
    start = tl.program_id(0) * span
    for p0 in range(start, tl.minimum(start + span, H * W), BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        prob, mask, _, x, y = _tile(z_ptr, p, C, H, W, FROM_LOGITS, BLOCK_C)
        m = tl.where(mask, prob + 1e-3, 0.0)
        mx = m * x[None, :]
        my = m * y[None, :]
        s0 += tl.sum(m, 1)
        s1 += tl.sum(mx, 1)
        s2 += tl.sum(my, 1)
        s3 += tl.sum(mx * x[None, :] + my * y[None, :], 1)
    # Slot (b, span): C x 4 float64; int64 from the program ids on, so that no product of
    # an id and a size is formed in int32.
    c = tl.arange(0, BLOCK_C)
    slot = (tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * C * 4
    out = part_ptr + slot + c * 4
    cm = c < C
    tl.store(out, s0.to(tl.float64), mask=cm)
    tl.store(out + 1, s1.to(tl.float64), mask=cm)
    tl.store(out + 2, s2.to(tl.float64), mask=cm)
    tl.store(out + 3, s3.to(tl.float64), mask=cm)


@triton.jit
def moments_backward_kernel(
    z_ptr,
    g_ptr,
    out_ptr,
    C,
    H,
    W,
    FROM_LOGITS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    prob, mask, offs, x, y = _tile(z_ptr, p, C, H, W, FROM_LOGITS, BLOCK_C)
    DT: tl.constexpr = z_ptr.dtype.element_ty
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    gb = g_ptr + tl.program_id(1).to(tl.int64) * C * 4 + c * 4
    g0 = tl.load(gb, mask=cm, other=0.0)[:, None]
    g1 = tl.load(gb + 1, mask=cm, other=0.0)[:, None]
    g2 = tl.load(gb + 2, mask=cm, other=0.0)[:, None]
    g3 = tl.load(gb + 3, mask=cm, other=0.0)[:, None]
    if FROM_LOGITS:
        xr = x[None, :]
        yr = y[None, :]
        # Upstream gradient of each channel's mass at each pixel.
        grad = g0.to(DT) + g1.to(DT) * xr + g2.to(DT) * yr + g3.to(DT) * (xr * xr + yr * yr)
        # Softmax adjoint: dz_c = p_c (G_c - sum_k p_k G_k); padded channels have p = 0.
        grad = prob * (grad - tl.sum(prob * grad, 0)[None, :])
    else:
        # In float64, as the CPU kernel: for a centre, G = (x - c) / mass is a difference of
        # two terms of size x / mass, which in float32 left rounding of ~1e-5 relative to
        # them where the exact gradient is 0 (a one-pixel image).
        xr = loss_coord(p % W, W, tl.float64)[None, :]
        yr = loss_coord(p // W, H, tl.float64)[None, :]
        grad = (g0 + g1 * xr + g2 * yr + g3 * (xr * xr + yr * yr)).to(DT)
    tl.store(out_ptr + offs, grad, mask=mask)


def moments_forward(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """(B, C, H, W) contiguous -> (B, C, 4) float64 moments of every channel (the
    background included when from_logits; the caller drops it)."""
    b, c, h, w = x.shape
    if x.numel() == 0:  # sums over no pixels (or of no channel)
        return torch.zeros((b, c, 4), dtype=torch.float64, device=x.device)
    block, span = tile_and_span()
    spans = triton.cdiv(h * w, span)
    partial = torch.empty((b, spans, c, 4), dtype=torch.float64, device=x.device)
    for start, stop in batch_runs(b):
        moments_forward_kernel[(spans, stop - start)](
            x[start:stop],
            partial[start:stop],
            c,
            h,
            w,
            span,
            FROM_LOGITS=from_logits,
            BLOCK_C=pow2(c),
            BLOCK_P=block,
            num_warps=BLOCKS["warps"],
        )
    return partial.sum(1)


def moments_backward(x: torch.Tensor, grad: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Gradient w.r.t. x of <grad, moments_forward(x)>; grad (B, C, 4) float64."""
    b, c, h, w = x.shape
    block = BLOCKS["tile_pixels"]
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    grad = grad.contiguous()
    for start, stop in batch_runs(b):
        moments_backward_kernel[(triton.cdiv(h * w, block), stop - start)](
            x[start:stop],
            grad[start:stop],
            out[start:stop],
            c,
            h,
            w,
            FROM_LOGITS=from_logits,
            BLOCK_C=pow2(c),
            BLOCK_P=block,
            num_warps=BLOCKS["warps"],
        )
    return out
