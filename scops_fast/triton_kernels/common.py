"""Per-pixel math shared by the kernels: SPEC coordinates, the thin-plate-spline position
and bilinear sampling corners. Coordinates are formed from integers and divided in the
kernel's dtype: a Python float argument would reach a float64 kernel as float32."""

import triton
import triton.language as tl


@triton.jit
def loss_coord(idx, n, DT: tl.constexpr):
    """SPEC section 1: 2 idx / n - 1 (not pixel centres)."""
    return (2 * idx).to(DT) / n - 1.0


@triton.jit
def corner_coord(idx, n, DT: tl.constexpr):
    """SPEC section 6: align_corners position 2 idx / (n - 1) - 1; one pixel sits at -1."""
    return (2 * idx).to(DT) / tl.maximum(n - 1, 1) - 1.0


@triton.jit
def tps_position(m_ptr, X, Y, DT: tl.constexpr):
    """Spline position of pixels at align_corners coordinates (X, Y) from one batch
    element's (28, 2) float64 coefficients at m_ptr. The 25 radial terms are recomputed
    rather than read from a table: 25 logs cost less than 100 bytes per pixel."""
    gx = tl.load(m_ptr + 50).to(DT) + tl.load(m_ptr + 52).to(DT) * X
    gx += tl.load(m_ptr + 54).to(DT) * Y
    gy = tl.load(m_ptr + 51).to(DT) + tl.load(m_ptr + 53).to(DT) * X
    gy += tl.load(m_ptr + 55).to(DT) * Y
    for a in tl.static_range(25):
        # Target point a of the 5x5 grid in itertools.product order: x is the slow index.
        dx = X - (-1.0 + 0.5 * (a // 5))
        dy = Y - (-1.0 + 0.5 * (a % 5))
        d2 = dx * dx + dy * dy
        pos = d2 > 0.0
        u = tl.where(pos, 0.5 * d2 * tl.log(tl.where(pos, d2, 1.0)), 0.0)
        gx += u * tl.load(m_ptr + 2 * a).to(DT)
        gy += u * tl.load(m_ptr + 2 * a + 1).to(DT)
    return gx, gy


@triton.jit
def bilinear_corners(gx, gy, H, W, BORDER: tl.constexpr):
    """grid_sample(align_corners=True) corners of normalised positions: offsets y*W + x,
    weights, and validity (False: outside the image under zeros padding, never read).
    A non-finite position (NaN or inf source points) has every corner invalid and a NaN
    first weight: it samples NaN (NaN * 0) and receives no gradient, in either padding
    mode, as the reference and the C++ kernels do."""
    finite = ((gx - gx) == 0.0) & ((gy - gy) == 0.0)
    ix = (gx + 1.0) * 0.5 * (W - 1)
    iy = (gy + 1.0) * 0.5 * (H - 1)
    if BORDER:
        ix = tl.minimum(tl.maximum(ix, 0.0), W - 1.0)
        iy = tl.minimum(tl.maximum(iy, 0.0), H - 1.0)
    # Far outside (or NaN) every corner is invalid anyway; parking such positions at -2
    # keeps the integer casts defined.
    near = finite & (ix > -2.0) & (ix < W + 1.0) & (iy > -2.0) & (iy < H + 1.0)
    ix = tl.where(near, ix, -2.0)
    iy = tl.where(near, iy, -2.0)
    fx = tl.floor(ix)
    fy = tl.floor(iy)
    tx = ix - fx
    ty = iy - fy
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    vx0 = (x0 >= 0) & (x0 < W)
    vx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    vy0 = (y0 >= 0) & (y0 < H)
    vy1 = (y0 + 1 >= 0) & (y0 + 1 < H)
    o00 = y0 * W + x0
    return (
        o00,
        o00 + 1,
        o00 + W,
        o00 + W + 1,
        tl.where(finite, (1.0 - tx) * (1.0 - ty), float("nan")),
        tx * (1.0 - ty),
        (1.0 - tx) * ty,
        tx * ty,
        vy0 & vx0,
        vy0 & vx1,
        vy1 & vx0,
        vy1 & vx1,
    )


@triton.jit
def warp_corners(m_ptr, offs, H, W, BORDER: tl.constexpr, DT: tl.constexpr):
    """Bilinear corners (as `bilinear_corners`) of the TPS warp at flat pixel indices offs."""
    X = corner_coord(offs % W, W, DT)
    Y = corner_coord(offs // W, H, DT)
    gx, gy = tps_position(m_ptr, X, Y, DT)
    return bilinear_corners(gx, gy, H, W, BORDER)
