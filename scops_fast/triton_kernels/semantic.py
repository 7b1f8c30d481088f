"""Semantic consistency (SPEC section 4): the loss sum and, in the same pass, its
gradients w.r.t. the logits and the basis.

Dense: V (B, C, H, W) is read exactly once. A fixed number of programs each take a
contiguous run of pixel tiles; per tile the part softmax is formed once, then channel
chunks stream through: r = W^T P - V, r^2 into the loss, W r into the gradient of P, and
P r^T into the program's own basis-gradient slot.

Low resolution, exact: per pixel P^T G P - 2 S P.U(A) + S^2 |U V|^2 (G = W W^T, A = W V
at (h, w), |U V|^2 from the neighbour Gram maps). Grid (H, B): one program per
full-resolution row. The adjoint of the upsampling U, a scatter onto the low-resolution
grid, is split along its separable axes: each row program contracts its columns with the
column weights into its own (K, w) slot, and a second kernel, one program per
low-resolution row, adds the slots of the rows that touch it in row order.
"""

import torch
import triton
import triton.language as tl

from scops_fast.triton_kernels import BLOCKS, MIN_DOT, batch_runs, pow2


@triton.jit
def _part_softmax(z_ptr, b, K, hw, p, pm, k, km):
    """Softmax over K + 1 logit channels at flat pixels p: the parts [BLOCK_K, BLOCK_P]
    (padded rows and pixels 0) and the background [BLOCK_P]."""
    base = z_ptr + b * (K + 1) * hw
    bg = tl.load(base + p, mask=pm, other=0.0)
    mask = km[:, None] & pm[None, :]
    parts = tl.load(base + (1 + k[:, None]) * hw + p[None, :], mask=mask, other=0.0)
    parts = tl.where(km[:, None], parts, float("-inf"))
    top = tl.maximum(tl.max(parts, 0), bg)
    e = tl.exp(parts - top[None, :])
    e_bg = tl.exp(bg - top)
    inv = 1.0 / (tl.sum(e, 0) + e_bg)
    return tl.where(mask, e * inv[None, :], 0.0), e_bg * inv


@triton.jit
def _store_softmax_grad(gz_ptr, b, K, hw, p, pm, k, km, probs, p_bg, g_parts):
    """dz_c = p_c (g_c - sum_k p_k g_k), with g = 0 for the background channel."""
    base = gz_ptr + b * (K + 1) * hw
    dot = tl.sum(probs * g_parts, 0)
    tl.store(base + p, -p_bg * dot, mask=pm)
    tl.store(
        base + (1 + k[:, None]) * hw + p[None, :],
        probs * (g_parts - dot[None, :]),
        mask=km[:, None] & pm[None, :],
    )


@triton.jit
def tile_range(n_tiles):
    """[first, stop) of the n_tiles tiles (of the whole batch) that this program of the
    1-D grid takes: contiguous runs, every tile once. In int64: (program id + 1) x n_tiles
    reaches 2^31 at a batch of 512 images of 1024 x 1024 (256 programs, 8.4M tiles)."""
    prog = tl.program_id(0).to(tl.int64)
    n_prog = tl.num_programs(0)
    return prog * n_tiles // n_prog, (prog + 1) * n_tiles // n_prog


@triton.jit
def semantic_dense_kernel(
    v_ptr,
    z_ptr,
    w_ptr,
    loss_ptr,
    gz_ptr,
    gw_ptr,
    C,
    K,
    H,
    W,
    n_tiles,
    GRADS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    prog = tl.program_id(0)
    hw = H * W
    per_image = tl.cdiv(hw, BLOCK_P)
    DT: tl.constexpr = z_ptr.dtype.element_ty
    k = tl.arange(0, BLOCK_K)
    km = k < K
    slot = gw_ptr + prog.to(tl.int64) * K * C
    loss = tl.zeros([BLOCK_P], tl.float64)
    first, stop = tile_range(n_tiles)
    for t in range(first, stop):
        b = t // per_image
        # A pixel index within one image fits int32, as elsewhere: the tile's offsets stay
        # 32-bit vectors (registers) and go to int64 only through b.
        p = (t % per_image).to(tl.int32) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < hw
        probs, p_bg = _part_softmax(z_ptr, b, K, hw, p, pm, k, km)
        g_parts = tl.zeros([BLOCK_K, BLOCK_P], DT)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            wmask = km[:, None] & cm[None, :]
            basis = tl.load(w_ptr + k[:, None] * C + c[None, :], mask=wmask, other=0.0)
            feats = tl.load(
                v_ptr + (b * C + c[:, None]) * hw + p[None, :],
                mask=cm[:, None] & pm[None, :],
                other=0.0,
            )
            # Padded channels and pixels give r = 0 (zero basis, zero P, zero V).
            r = tl.dot(tl.trans(basis), probs, input_precision=PRECISION) - feats
            loss += tl.sum(r * r, 0).to(tl.float64)
            if GRADS:
                g_parts = tl.dot(basis, r, acc=g_parts, input_precision=PRECISION)
                # The slot belongs to this program alone. The barrier orders its
                # read-modify-write across the program's threads from tile to tile, which
                # may hold an element in different threads for the load and the store.
                ptrs = slot + k[:, None] * C + c[None, :]
                gw = tl.dot(probs, tl.trans(r), input_precision=PRECISION)
                tl.store(ptrs, tl.load(ptrs, mask=wmask, other=0.0) + gw, mask=wmask)
                tl.debug_barrier()
        if GRADS:
            _store_softmax_grad(gz_ptr, b, K, hw, p, pm, k, km, probs, p_bg, 2.0 * g_parts)
    tl.store(loss_ptr + prog, tl.sum(loss, 0))


@triton.jit
def _upsample_axis(o, n_out, n_in, DT: tl.constexpr):
    """Bilinear align_corners=True source of output index o: (lo, hi, frac)."""
    src = (o * (n_in - 1)).to(DT) / tl.maximum(n_out - 1, 1)
    lo = tl.minimum(src.to(tl.int32), n_in - 1)  # src >= 0: truncation is floor
    return lo, tl.minimum(lo + 1, n_in - 1), src - lo.to(DT)


@triton.jit
def semantic_lowres_kernel(
    z_ptr,
    a_ptr,
    g_ptr,
    d_ptr,
    s_ptr,
    loss_ptr,
    gz_ptr,
    t_ptr,
    gg_ptr,
    K,
    H,
    W,
    h,
    w,
    HAS_SALIENCY: tl.constexpr,
    GRADS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    i = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    row = b * H + i
    hw = H * W
    low = h * w
    DT: tl.constexpr = z_ptr.dtype.element_ty
    k = tl.arange(0, BLOCK_K)
    km = k < K
    xs = tl.arange(0, BLOCK_X)
    gram_basis = tl.load(
        g_ptr + k[:, None] * K + k[None, :], mask=km[:, None] & km[None, :], other=0.0
    )
    y0, y1, fy = _upsample_axis(i, H, h, DT)
    a_rows = a_ptr + b * K * low + k[:, None] * low
    d_base = d_ptr + b * 5 * low
    loss = tl.zeros([BLOCK_J], tl.float64)
    t_row = tl.zeros([BLOCK_K, BLOCK_X], DT)
    gram_p = tl.zeros([BLOCK_K, BLOCK_K], DT)
    for j0 in range(0, W, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jm = j < W
        p = i * W + j
        probs, p_bg = _part_softmax(z_ptr, b, K, hw, p, jm, k, km)
        x0, x1, fx = _upsample_axis(j, W, w, DT)
        w00 = (1.0 - fy) * (1.0 - fx)
        w01 = (1.0 - fy) * fx
        w10 = fy * (1.0 - fx)
        w11 = fy * fx
        o00 = y0 * w + x0
        o01 = y0 * w + x1
        o10 = y1 * w + x0
        o11 = y1 * w + x1
        amask = km[:, None] & jm[None, :]
        ua = w00[None, :] * tl.load(a_rows + o00[None, :], mask=amask, other=0.0)
        ua += w01[None, :] * tl.load(a_rows + o01[None, :], mask=amask, other=0.0)
        ua += w10[None, :] * tl.load(a_rows + o10[None, :], mask=amask, other=0.0)
        ua += w11[None, :] * tl.load(a_rows + o11[None, :], mask=amask, other=0.0)
        # |U V|^2 = sum_a w_a^2 |v_a|^2 + 2 sum_{a<b} w_a w_b <v_a, v_b>, the inner products
        # read from the Gram maps at the corner that owns each pair.
        vv = w00 * w00 * tl.load(d_base + o00, mask=jm, other=0.0)
        vv += w01 * w01 * tl.load(d_base + o01, mask=jm, other=0.0)
        vv += w10 * w10 * tl.load(d_base + o10, mask=jm, other=0.0)
        vv += w11 * w11 * tl.load(d_base + o11, mask=jm, other=0.0)
        cross_terms = w00 * w01 * tl.load(d_base + low + o00, mask=jm, other=0.0)
        cross_terms += w10 * w11 * tl.load(d_base + low + o10, mask=jm, other=0.0)
        cross_terms += w00 * w10 * tl.load(d_base + 2 * low + o00, mask=jm, other=0.0)
        cross_terms += w01 * w11 * tl.load(d_base + 2 * low + o01, mask=jm, other=0.0)
        cross_terms += w00 * w11 * tl.load(d_base + 3 * low + o00, mask=jm, other=0.0)
        cross_terms += w01 * w10 * tl.load(d_base + 4 * low + o00, mask=jm, other=0.0)
        vv += 2.0 * cross_terms
        if HAS_SALIENCY:
            s = tl.load(s_ptr + b * hw + p, mask=jm, other=0.0)
        else:
            s = tl.full([BLOCK_J], 1.0, DT)
        gp = tl.dot(gram_basis, probs, input_precision=PRECISION)
        quad = tl.sum(probs * gp, 0)
        cross = tl.sum(probs * ua, 0)
        loss += tl.where(jm, quad - 2.0 * s * cross + s * s * vv, 0.0).to(tl.float64)
        if GRADS:
            # d(P^T G P)/dP = (G + G^T) P.
            g_parts = gp + tl.dot(tl.trans(gram_basis), probs, input_precision=PRECISION)
            g_parts -= 2.0 * s[None, :] * ua
            _store_softmax_grad(gz_ptr, b, K, hw, p, jm, k, km, probs, p_bg, g_parts)
            # Column half of U's adjoint: -2 S P spread over the low-resolution columns.
            col_w = tl.where(x0[:, None] == xs[None, :], 1.0 - fx[:, None], 0.0)
            col_w += tl.where(x1[:, None] == xs[None, :], fx[:, None], 0.0)
            spread = (-2.0 * s[None, :] * probs).to(DT)
            t_row = tl.dot(spread, col_w.to(DT), acc=t_row, input_precision=PRECISION)
            gram_p = tl.dot(probs, tl.trans(probs), acc=gram_p, input_precision=PRECISION)
    tl.store(loss_ptr + row, tl.sum(loss, 0))
    if GRADS:
        tl.store(
            t_ptr + row * K * w + k[:, None] * w + xs[None, :],
            t_row,
            mask=km[:, None] & (xs < w)[None, :],
        )
        tl.store(
            gg_ptr + row * K * K + k[:, None] * K + k[None, :],
            gram_p,
            mask=km[:, None] & km[None, :],
        )


@triton.jit
def lowres_rows_kernel(t_ptr, ga_ptr, K, H, h, w, BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr):
    """Row half of U's adjoint: low-resolution row y adds, in row order, the column-
    contracted slots of the full-resolution rows whose bilinear weights touch it."""
    y = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    DT: tl.constexpr = t_ptr.dtype.element_ty
    k = tl.arange(0, BLOCK_K)
    xs = tl.arange(0, BLOCK_X)
    mask = (k < K)[:, None] & (xs < w)[None, :]
    tile = k[:, None] * w + xs[None, :]
    # Rows i with a source in (y - 1, y + 1), widened by one for rounding: the weights
    # below are exactly those of the forward, zero outside.
    step = tl.maximum(h - 1, 1)
    first = tl.maximum((y - 1) * (H - 1) // step - 1, 0)
    last = tl.minimum((y + 1) * (H - 1) // step + 2, H)
    acc = tl.zeros([BLOCK_K, BLOCK_X], DT)
    for i in range(first, last):
        lo, hi, frac = _upsample_axis(i, H, h, DT)
        weight = tl.where(lo == y, 1.0 - frac, 0.0) + tl.where(hi == y, frac, 0.0)
        acc += weight * tl.load(t_ptr + (b * H + i) * K * w + tile, mask=mask, other=0.0)
    tl.store(ga_ptr + ((b * K + k[:, None]) * h + y) * w + xs[None, :], acc, mask=mask)


# float32 dots must not drop to TF32 (10-bit mantissa): results are held to 1e-5.
PRECISION = "ieee"


def semantic_dense(features, pred, basis, grads: bool):
    """features (B, C, H, W), pred (B, K+1, H, W), basis (K, C): contiguous, one dtype.
    Returns the float64 loss sum, grad_pred and grad_basis (empty unless grads)."""
    b, c, h, w = features.shape
    k = pred.shape[1] - 1
    block_p = BLOCKS["dense_pixels"]
    n_tiles = b * triton.cdiv(h * w, block_p)
    dev = pred.device
    if n_tiles == 0:  # no pixel: no loss, and no gradient reaches the basis
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        if not grads:
            return loss, pred.new_empty((0,)), pred.new_empty((0, c))
        return loss, torch.empty_like(pred), torch.zeros_like(basis)
    n_prog = min(BLOCKS["dense_programs"], n_tiles)
    loss = torch.empty((n_prog,), dtype=torch.float64, device=dev)
    grad_pred = torch.empty_like(pred) if grads else pred.new_empty((0,))
    slots = torch.zeros((n_prog, k, c) if grads else (0,), dtype=pred.dtype, device=dev)
    semantic_dense_kernel[(n_prog,)](
        features,
        pred,
        basis,
        loss,
        grad_pred,
        slots,
        c,
        k,
        h,
        w,
        n_tiles,
        GRADS=grads,
        PRECISION=PRECISION,
        BLOCK_K=pow2(k, MIN_DOT),
        BLOCK_C=min(pow2(c, MIN_DOT), pow2(BLOCKS["dense_channels"], MIN_DOT)),
        BLOCK_P=block_p,
    )
    if not grads:
        return loss.sum(), grad_pred, pred.new_empty((0, c))
    grad_basis = (2.0 * slots.to(torch.float64).sum(0)).to(pred.dtype)
    return loss.sum(), grad_pred, grad_basis


def semantic_lowres(pred, lowres, gram_basis, gram, saliency, grads: bool):
    """pred (B, K+1, H, W), lowres A (B, K, h, w), gram_basis G (K, K), gram (B, 5, h, w),
    saliency (B, H, W) or None: contiguous, one dtype. Returns the float64 loss sum and,
    when grads, the gradients w.r.t. pred, A and G (else empty tensors)."""
    b, k1, H, W = pred.shape
    k = k1 - 1
    h, w = lowres.shape[2:]
    dev = pred.device
    if b * H * W == 0:  # no pixel: no loss, and no gradient reaches the maps or the basis
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        if not grads:
            return loss, pred.new_empty((0,)), pred.new_empty((0,)), pred.new_empty((0,))
        return loss, torch.empty_like(pred), torch.zeros_like(lowres), torch.zeros_like(gram_basis)
    if h * w == 0:  # every pixel reads four low-resolution neighbours
        raise ValueError(f"semantic_lowres: low-resolution maps of {h} x {w} have no pixel")
    block_k, block_x = pow2(k, MIN_DOT), pow2(w, MIN_DOT)
    loss = torch.empty((b, H), dtype=torch.float64, device=dev)
    if grads:
        grad_pred = torch.empty_like(pred)
        t = torch.empty((b, H, k, w), dtype=pred.dtype, device=dev)
        gg = torch.empty((b, H, k, k), dtype=pred.dtype, device=dev)
    else:
        grad_pred = t = gg = pred.new_empty((0,))
    runs = [slice(start, stop) for start, stop in batch_runs(b)]
    for i in runs:
        semantic_lowres_kernel[(H, i.stop - i.start)](
            pred[i],
            lowres[i],
            gram_basis,
            gram[i],
            pred[i] if saliency is None else saliency[i],
            loss[i],
            grad_pred[i],
            t[i],
            gg[i],
            k,
            H,
            W,
            h,
            w,
            HAS_SALIENCY=saliency is not None,
            GRADS=grads,
            PRECISION=PRECISION,
            BLOCK_K=block_k,
            BLOCK_J=min(pow2(W, MIN_DOT), pow2(BLOCKS["lowres_columns"], MIN_DOT)),
            BLOCK_X=block_x,
        )
    if not grads:
        empty = pred.new_empty((0,))
        return loss.sum(), grad_pred, empty, pred.new_empty((0,))
    grad_lowres = torch.empty((b, k, h, w), dtype=pred.dtype, device=dev)
    for i in runs:
        lowres_rows_kernel[(h, i.stop - i.start)](
            t[i], grad_lowres[i], k, H, h, w, BLOCK_K=block_k, BLOCK_X=block_x
        )
    grad_gram = gg.to(torch.float64).sum((0, 1)).to(pred.dtype)
    return loss.sum(), grad_pred, grad_lowres, grad_gram
