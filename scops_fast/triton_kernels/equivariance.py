"""Fused equivariance statistics (SPEC section 7) in one pass over pixels: the warp of
pred, the channel softmax of it (q) and of pred_tps (p), the KL sum of q (log q - log p)
with q = 0 terms adding 0, and the part moments (1, x, y) of both maps.

[channels, pixels] tiles. The forward's grid is (pixel spans, B): a program walks its span
tile by tile, keeps its sums in registers and writes them to its own partial slot. The
backward, one program per tile, recomputes the tile, stores the gradient w.r.t. pred_tps
directly and scatters the landmark gradient back through the warp in fixed point."""

import torch
import triton
import triton.language as tl

from scops_fast.triton_kernels import BLOCKS, batch_runs, pow2, tile_and_span
from scops_fast.triton_kernels.common import loss_coord, warp_corners
from scops_fast.triton_kernels.fixed import (
    accumulators,
    count_nonfinite,
    from_fixed,
    scale_for,
    to_fixed,
)


@triton.jit
def _log_softmax(z, cm):
    """Channel (axis 0) log-softmax and softmax of a tile. Padded channels get p = 0 and
    log p = 0 rather than -inf, so that no inf - inf appears downstream."""
    z = tl.where(cm[:, None], z, float("-inf"))
    shifted = z - tl.max(z, 0)[None, :]
    e = tl.exp(shifted)
    total = tl.sum(e, 0)[None, :]
    return tl.where(cm[:, None], shifted - tl.log(total), 0.0), e / total


@triton.jit
def _tile(pred_ptr, tps_ptr, m_ptr, p, C, H, W, BORDER, BLOCK_C):
    """Everything both passes need at the [BLOCK_C, pixels p] tile."""
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    pm = p < hw
    mask = cm[:, None] & pm[None, :]
    DT: tl.constexpr = pred_ptr.dtype.element_ty
    o00, o01, o10, o11, w00, w01, w10, w11, v00, v01, v10, v11 = warp_corners(
        m_ptr + b * 56, p, H, W, BORDER, DT
    )
    planes = (b * C + c[:, None]) * hw
    src = pred_ptr + planes
    warped = w00[None, :] * tl.load(src + o00[None, :], mask=mask & v00[None, :], other=0.0)
    warped += w01[None, :] * tl.load(src + o01[None, :], mask=mask & v01[None, :], other=0.0)
    warped += w10[None, :] * tl.load(src + o10[None, :], mask=mask & v10[None, :], other=0.0)
    warped += w11[None, :] * tl.load(src + o11[None, :], mask=mask & v11[None, :], other=0.0)
    log_q, q = _log_softmax(warped, cm)
    log_p, prob = _log_softmax(tl.load(tps_ptr + planes + p[None, :], mask=mask, other=0.0), cm)
    # KLDivLoss semantics: an element whose target underflowed to 0 adds exactly 0.
    kept = mask & (q > 0.0)
    x = loss_coord(p % W, W, DT)
    y = loss_coord(p // W, H, DT)
    corners = (o00, o01, o10, o11, w00, w01, w10, w11, v00, v01, v10, v11)
    return planes, mask, kept, q, log_q, prob, log_p, x, y, corners


@triton.jit
def equivariance_forward_kernel(
    pred_ptr,
    tps_ptr,
    m_ptr,
    kl_ptr,
    mom_ptr,
    C,
    H,
    W,
    span,
    BORDER: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    DT: tl.constexpr = pred_ptr.dtype.element_ty
    kl = tl.zeros([BLOCK_P], DT)
    # Moments of every channel (the caller drops the background), of p then of q.
    tp0 = tl.zeros([BLOCK_C], DT)
    tp1 = tl.zeros([BLOCK_C], DT)
    tp2 = tl.zeros([BLOCK_C], DT)
    tq0 = tl.zeros([BLOCK_C], DT)
    tq1 = tl.zeros([BLOCK_C], DT)
    tq2 = tl.zeros([BLOCK_C], DT)
    start = tl.program_id(0) * span
    for p0 in range(start, tl.minimum(start + span, H * W), BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        _, mask, kept, q, log_q, prob, log_p, x, y, _ = _tile(
            pred_ptr, tps_ptr, m_ptr, p, C, H, W, BORDER, BLOCK_C
        )
        kl += tl.sum(tl.where(kept, q * (log_q - log_p), 0.0), 0)
        mp = tl.where(mask, prob + 1e-3, 0.0)
        mq = tl.where(mask, q + 1e-3, 0.0)
        tp0 += tl.sum(mp, 1)
        tp1 += tl.sum(mp * x[None, :], 1)
        tp2 += tl.sum(mp * y[None, :], 1)
        tq0 += tl.sum(mq, 1)
        tq1 += tl.sum(mq * x[None, :], 1)
        tq2 += tl.sum(mq * y[None, :], 1)
    # int64 from the program ids on: no product of an id and a size is formed in int32.
    slot = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
    tl.store(kl_ptr + slot, tl.sum(kl.to(tl.float64), 0))
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    out = mom_ptr + slot * C * 6 + c * 6
    tl.store(out, tp0.to(tl.float64), mask=cm)
    tl.store(out + 1, tp1.to(tl.float64), mask=cm)
    tl.store(out + 2, tp2.to(tl.float64), mask=cm)
    tl.store(out + 3, tq0.to(tl.float64), mask=cm)
    tl.store(out + 4, tq1.to(tl.float64), mask=cm)
    tl.store(out + 5, tq2.to(tl.float64), mask=cm)


@triton.jit
def _moment_grad(g_ptr, c, cm, x, y, DT: tl.constexpr):
    """Upstream gradient of each channel's mass at each pixel: g0 + g1 x + g2 y."""
    g = g_ptr + c * 3
    g0 = tl.load(g, mask=cm, other=0.0).to(DT)[:, None]
    g1 = tl.load(g + 1, mask=cm, other=0.0).to(DT)[:, None]
    g2 = tl.load(g + 2, mask=cm, other=0.0).to(DT)[:, None]
    return g0 + g1 * x[None, :] + g2 * y[None, :]


@triton.jit
def equivariance_backward_kernel(
    pred_ptr,
    tps_ptr,
    m_ptr,
    gkl_ptr,
    gtps_ptr,
    gwarp_ptr,
    sc_ptr,
    grad_tps_ptr,
    acc_ptr,
    bad_ptr,
    C,
    H,
    W,
    BORDER: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    planes, mask, kept, q, _, prob, _, x, y, corners = _tile(
        pred_ptr, tps_ptr, m_ptr, p, C, H, W, BORDER, BLOCK_C
    )
    o00, o01, o10, o11, w00, w01, w10, w11, v00, v01, v10, v11 = corners
    DT: tl.constexpr = pred_ptr.dtype.element_ty
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    # The moment gradients arrive (B, C, 3) with a zero background row.
    g_tps = _moment_grad(gtps_ptr + b * C * 3, c, cm, x, y, DT)
    g_warp = _moment_grad(gwarp_ptr + b * C * 3, c, cm, x, y, DT)
    g_kl = tl.load(gkl_ptr + b).to(DT)
    # d KL / d z_tps = p * sum(kept q) - kept q; moments: softmax adjoint.
    q_kept = tl.where(kept, q, 0.0)
    grad = g_kl * (prob * tl.sum(q_kept, 0)[None, :] - q_kept)
    grad += prob * (g_tps - tl.sum(prob * g_tps, 0)[None, :])
    tl.store(grad_tps_ptr + planes + p[None, :], grad, mask=mask)
    # Only the landmark term reaches pred (the KL target is detached): through the
    # softmax to the warped logits, then through the warp.
    d_warped = q * (g_warp - tl.sum(q * g_warp, 0)[None, :])
    count_nonfinite(d_warped, mask, bad_ptr)
    scale = tl.load(sc_ptr)
    dst = acc_ptr + planes
    tl.atomic_add(
        dst + o00[None, :], to_fixed(w00[None, :] * d_warped, scale), mask=mask & v00[None, :]
    )
    tl.atomic_add(
        dst + o01[None, :], to_fixed(w01[None, :] * d_warped, scale), mask=mask & v01[None, :]
    )
    tl.atomic_add(
        dst + o10[None, :], to_fixed(w10[None, :] * d_warped, scale), mask=mask & v10[None, :]
    )
    tl.atomic_add(
        dst + o11[None, :], to_fixed(w11[None, :] * d_warped, scale), mask=mask & v11[None, :]
    )


def equivariance_forward(pred, pred_tps, mapping, border: bool):
    """pred, pred_tps (B, C, H, W) contiguous, one dtype; mapping (B, 28, 2) float64.
    Returns float64 kl (B,) and moments (B, C, 3) of softmax(pred_tps) and of
    softmax(warp(pred)), every channel."""
    b, c, h, w = pred.shape
    f64 = dict(dtype=torch.float64, device=pred.device)
    if pred.numel() == 0:  # sums over no pixels (or of no channel)
        return (
            torch.zeros((b,), **f64),
            torch.zeros((b, c, 3), **f64),
            torch.zeros((b, c, 3), **f64),
        )
    block, span = tile_and_span()
    spans = triton.cdiv(h * w, span)
    kl = torch.empty((b, spans), **f64)
    mom = torch.empty((b, spans, c, 6), **f64)
    for start, stop in batch_runs(b):
        i = slice(start, stop)
        equivariance_forward_kernel[(spans, stop - start)](
            pred[i],
            pred_tps[i],
            mapping[i],
            kl[i],
            mom[i],
            c,
            h,
            w,
            span,
            BORDER=border,
            BLOCK_C=pow2(c),
            BLOCK_P=block,
            num_warps=BLOCKS["warps"],
        )
    mom = mom.sum(1)
    return kl.sum(1), mom[..., :3], mom[..., 3:]


def equivariance_backward(pred, pred_tps, mapping, border: bool, g_kl, g_tps, g_warp):
    """Gradients (w.r.t. pred, w.r.t. pred_tps) of <g_kl, kl> + <g_tps, mom_tps> +
    <g_warp, mom_warp>; g_tps and g_warp (B, C, 3) float64 cover every channel."""
    b, c, h, w = pred.shape
    if pred.numel() == 0:  # no pixel to differentiate (and no maximum to scale by)
        return torch.zeros_like(pred), torch.zeros_like(pred_tps)
    block = BLOCKS["tile_pixels"]
    # |d warped| <= 2 max |g0 + g1 x + g2 y| <= 2 max (|g0| + |g1| + |g2|) for |x|, |y| <= 1.
    bound = 2.0 * g_warp.abs().sum(-1).amax()
    scale = scale_for(bound, h * w)
    grad_tps = torch.empty_like(pred_tps)
    acc, bad = accumulators(pred.shape, pred.device)
    g_kl, g_tps, g_warp = g_kl.contiguous(), g_tps.contiguous(), g_warp.contiguous()
    for start, stop in batch_runs(b):
        i = slice(start, stop)
        equivariance_backward_kernel[(triton.cdiv(h * w, block), stop - start)](
            pred[i],
            pred_tps[i],
            mapping[i],
            g_kl[i],
            g_tps[i],
            g_warp[i],
            scale,
            grad_tps[i],
            acc[i],
            bad,
            c,
            h,
            w,
            BORDER=border,
            BLOCK_C=pow2(c),
            BLOCK_P=block,
            num_warps=BLOCKS["warps"],
        )
    return from_fixed(acc, scale, bad, pred.dtype), grad_tps
