"""Pure-PyTorch reference of every SCOPS loss (SPEC.md sections 1-7).

This module is the oracle every fast backend is tested against, so it favours the
most direct transcription of the SPEC formulas over speed. It is still fully
vectorised: no Python loops over batch or parts, any float dtype, any device,
any H and W.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

# Probability mass added to every pixel of a part map before normalising it into
# a density (SPEC section 2); keeps centres defined for an empty part.
CENTER_EPS = 1e-3
# Added under the square root of the row norm in the orthonormality loss (SPEC section 5).
ORTH_EPS = 1e-6

PADDING_MODES = ("zeros", "border")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in float32: softmax and sums over a whole
    image lose too much in 16 bits."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# --------------------------------------------------------------------------- §1
def coordinate_axes(height: int, width: int, *, dtype=None, device=None):
    """`x[j] = 2j/W - 1` and `y[i] = 2i/H - 1` as 1-D tensors (SPEC section 1)."""
    x = torch.arange(width, dtype=dtype, device=device) * (2.0 / width) - 1.0
    y = torch.arange(height, dtype=dtype, device=device) * (2.0 / height) - 1.0
    return x, y


def part_probabilities(pred: torch.Tensor) -> torch.Tensor:
    """Channel softmax of logits (B, K+1, H, W) without the background: (B, K, H, W)."""
    return torch.softmax(pred, dim=1)[:, 1:]


# --------------------------------------------------------------------------- §2
def _densities(part_probs: torch.Tensor):
    """Row and column marginals of pdf = (P + eps) / sum(P + eps), plus the axes.

    Centres and spreads only need the marginals, so the (B, K, H, W) pdf is never
    kept beyond this function.
    """
    _, _, height, width = part_probs.shape
    mass = part_probs + CENTER_EPS
    total = mass.sum(dim=(2, 3))
    col = mass.sum(dim=2) / total[..., None]  # (B, K, W): marginal along x
    row = mass.sum(dim=3) / total[..., None]  # (B, K, H): marginal along y
    x, y = coordinate_axes(height, width, dtype=part_probs.dtype, device=part_probs.device)
    return col, row, x, y


def batch_get_centers(part_probs: torch.Tensor) -> torch.Tensor:
    """Centre (x, y) of each part map (B, K, H, W) -> (B, K, 2) (SPEC section 2)."""
    dtype = part_probs.dtype
    col, row, x, y = _densities(part_probs.to(compute_dtype(dtype)))
    return torch.stack(((col * x).sum(-1), (row * y).sum(-1)), dim=-1).to(dtype)


# --------------------------------------------------------------------------- §3
def concentration_loss(pred: torch.Tensor) -> torch.Tensor:
    """`(1/B^2) sum_{b,k} sum_ij pdf * |(x, y) - c|^2` of logits (B, K+1, H, W)."""
    dtype = pred.dtype
    probs = part_probabilities(pred.to(compute_dtype(dtype)))
    col, row, x, y = _densities(probs)
    cx = (col * x).sum(-1, keepdim=True)
    cy = (row * y).sum(-1, keepdim=True)
    spread = (col * (x - cx) ** 2).sum(-1) + (row * (y - cy) ** 2).sum(-1)
    batch = pred.shape[0]
    return (spread.sum() / (batch * batch)).to(dtype)


# --------------------------------------------------------------------------- §4
def semantic_consistency_loss(
    features: torch.Tensor, pred: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between `sum_k P_k W_k` and the features V (B, C, H, W)."""
    dtype = pred.dtype
    ct = compute_dtype(dtype)
    probs = part_probabilities(pred.to(ct))
    recon = torch.einsum("bkhw,kc->bchw", probs, basis.to(ct))
    return F.mse_loss(recon, features.to(ct)).to(dtype)


def upsample_features(features, height: int, width: int, saliency=None) -> torch.Tensor:
    """Bilinear (align_corners=True) upsampling of one low-resolution map or a list of
    them, concatenated along channels, optionally multiplied by a saliency (B, H, W)."""
    maps = [features] if torch.is_tensor(features) else list(features)
    up = torch.cat(
        [F.interpolate(f, size=(height, width), mode="bilinear", align_corners=True) for f in maps],
        dim=1,
    )
    if saliency is not None:
        up = up * saliency[:, None].to(up.dtype)
    return up


def semantic_consistency_loss_lowres(features, pred, basis, saliency=None) -> torch.Tensor:
    """SPEC section 4 with V = S * upsample(features). The reference materialises V
    at full resolution; the fast backends do not."""
    dtype = pred.dtype
    ct = compute_dtype(dtype)
    maps = [features] if torch.is_tensor(features) else list(features)
    maps = [f.to(ct) for f in maps]
    sal = None if saliency is None else saliency.to(ct)
    upsampled = upsample_features(maps, pred.shape[2], pred.shape[3], sal)
    return semantic_consistency_loss(upsampled, pred.to(ct), basis.to(ct)).to(dtype)


# --------------------------------------------------------------------------- §5
def orthonormal_loss(w: torch.Tensor) -> torch.Tensor:
    """`sum((wn wn^T - I)^2)` with rows normalised by `sqrt(sum w^2 + 1e-6)`."""
    dtype = w.dtype
    w = w.to(compute_dtype(dtype))
    wn = w / torch.sqrt((w * w).sum(dim=1, keepdim=True) + ORTH_EPS)
    gram = wn @ wn.t()
    eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return ((gram - eye) ** 2).sum().to(dtype)


# --------------------------------------------------------------------------- §6
_AXIS = (-1.0, -0.5, 0.0, 0.5, 1.0)
# itertools.product order, each point (x, y): x is the slow index.
TARGET_POINTS_LIST = tuple(itertools.product(_AXIS, _AXIS))
N_CONTROL = len(TARGET_POINTS_LIST)  # 25


def target_points(dtype=torch.float64, device=None) -> torch.Tensor:
    return torch.tensor(TARGET_POINTS_LIST, dtype=dtype, device=device)


def radial_basis(d2: torch.Tensor) -> torch.Tensor:
    """`U(d2) = 0.5 * d2 * log(d2)`, 0 at 0 (the d2 -> 0 limit)."""
    safe = torch.where(d2 > 0, d2, torch.ones_like(d2))
    return torch.where(d2 > 0, 0.5 * d2 * torch.log(safe), torch.zeros_like(d2))


def _inverse_kernel() -> torch.Tensor:
    t = target_points()
    d2 = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    kernel = torch.zeros(N_CONTROL + 3, N_CONTROL + 3, dtype=torch.float64)
    kernel[:N_CONTROL, :N_CONTROL] = radial_basis(d2)
    kernel[:N_CONTROL, N_CONTROL] = 1.0
    kernel[N_CONTROL, :N_CONTROL] = 1.0
    kernel[:N_CONTROL, N_CONTROL + 1 :] = t
    kernel[N_CONTROL + 1 :, :N_CONTROL] = t.t()
    return torch.linalg.inv(kernel)


# A constant of the SPEC, inverted once at import (a plain global keeps torch.compile
# free of cache wrappers).
INVERSE_KERNEL = _inverse_kernel()


def tps_mapping(source_points: torch.Tensor) -> torch.Tensor:
    """`M = L^-1 [S; 0]`: (B, 25, 2) source points -> (B, 28, 2) spline coefficients.

    The kernel is inverted once in float64; only its first 25 columns matter since
    the last three rows of the right-hand side are zero.
    """
    linv = INVERSE_KERNEL.to(device=source_points.device)
    sp = source_points.to(torch.float64)
    return torch.einsum("nm,bmd->bnd", linv[:, :N_CONTROL], sp)


def tps_features(height: int, width: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Per-pixel spline features (H, W, 28): 25 radial terms then (1, X, Y), with the
    align_corners pixel positions `X = 2j/(W-1) - 1`, `Y = 2i/(H-1) - 1`."""
    # linspace gives -1 for a single pixel, where 2j/(W-1) - 1 is undefined.
    xs = torch.linspace(-1.0, 1.0, width, dtype=torch.float64, device=device)
    ys = torch.linspace(-1.0, 1.0, height, dtype=torch.float64, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    t = target_points(device=device)
    d2 = (gx[..., None] - t[:, 0]) ** 2 + (gy[..., None] - t[:, 1]) ** 2
    feats = torch.cat(
        (radial_basis(d2), torch.ones_like(gx)[..., None], gx[..., None], gy[..., None]), dim=-1
    )
    return feats.to(dtype)


def tps_grid(source_points: torch.Tensor, height: int, width: int, dtype=None) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) of the spline mapping target points to `source_points`.

    Computed in float64 and returned in `dtype`, by default the dtype of
    `source_points` (float32 for half-precision points: grid_sample positions need
    the extra bits).
    """
    mapping = tps_mapping(source_points)
    feats = tps_features(height, width, device=source_points.device)
    grid = torch.einsum("hwn,bnd->bhwd", feats, mapping)
    return grid.to(dtype or compute_dtype(source_points.dtype))


def tps_grid_float32_solve(source_points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`tps_grid` solved and evaluated in float32 throughout, as the original's TPS
    (tps_stn_pytorch's TPSGridGen) does: its float32 kernel inverse misses the control
    points by about 6e-6, which moves warped 8-bit images by about 0.01 levels. For
    reproducing the original bit-near; `tps_grid` is the accurate one."""
    f32, device = torch.float32, source_points.device
    t = target_points(dtype=f32, device=device)

    def radial(points: torch.Tensor) -> torch.Tensor:
        diff = points[:, None, :] - t[None, :, :]
        d2 = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]
        return torch.nan_to_num(0.5 * d2 * torch.log(d2), nan=0.0)

    kernel = torch.zeros(N_CONTROL + 3, N_CONTROL + 3, dtype=f32, device=device)
    kernel[:N_CONTROL, :N_CONTROL] = radial(t)
    kernel[:N_CONTROL, N_CONTROL] = 1.0
    kernel[N_CONTROL, :N_CONTROL] = 1.0
    kernel[:N_CONTROL, N_CONTROL + 1 :] = t
    kernel[N_CONTROL + 1 :, :N_CONTROL] = t.t()
    rows = torch.arange(height, dtype=f32, device=device)
    cols = torch.arange(width, dtype=f32, device=device)
    gy, gx = torch.meshgrid(rows * 2 / (height - 1) - 1, cols * 2 / (width - 1) - 1, indexing="ij")
    pixels = torch.stack((gx.reshape(-1), gy.reshape(-1)), -1)
    feats = torch.cat((radial(pixels), torch.ones_like(pixels[:, :1]), pixels), -1)
    rhs = torch.cat(
        (source_points.to(f32), source_points.new_zeros(source_points.shape[0], 3, 2, dtype=f32)),
        1,
    )
    grid = feats @ (torch.linalg.inv(kernel) @ rhs)
    return grid.view(-1, height, width, 2)


def tps_warp(x: torch.Tensor, source_points: torch.Tensor, padding_mode: str = "zeros"):
    """`F.grid_sample(x, tps_grid(S), 'bilinear', padding_mode, align_corners=True)`."""
    dtype = x.dtype
    ct = compute_dtype(dtype)
    grid = tps_grid(source_points, x.shape[2], x.shape[3], dtype=ct)
    # A non-finite position (NaN or inf source points) samples NaN and receives no
    # gradient. grid_sample itself must never see one: with border padding it reads
    # and, backwards, writes out of bounds (torch 2.x segfaults).
    bad = ~torch.isfinite(grid).all(dim=-1, keepdim=True)  # (B, H, W, 1)
    grid = grid.masked_fill(bad, 0.0)
    out = F.grid_sample(
        x.to(ct), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True
    )
    out = out.masked_fill(bad.squeeze(-1).unsqueeze(1), float("nan"))
    return out.to(dtype)


# --------------------------------------------------------------------------- §7
def equivariance_losses(pred, pred_tps, source_points, padding_mode: str = "zeros"):
    """(L_eqv, L_lmeqv) of SPEC section 7.

    One warp serves both terms: the KL target uses it detached, the landmark term
    lets gradients reach `pred` through it.
    """
    dtype = pred.dtype
    ct = compute_dtype(dtype)
    warped = tps_warp(pred.to(ct), source_points, padding_mode)
    log_q = torch.log_softmax(warped.detach(), dim=1)
    q = log_q.exp()
    log_p = torch.log_softmax(pred_tps.to(ct), dim=1)
    # KLDivLoss semantics: an element whose target underflowed to 0 adds exactly 0.
    pointwise = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    loss_eqv = pointwise.mean()
    centers_tps = batch_get_centers(part_probabilities(pred_tps.to(ct)))
    centers_warp = batch_get_centers(part_probabilities(warped))
    loss_lmeqv = ((centers_tps - centers_warp) ** 2).mean()
    return loss_eqv.to(dtype), loss_lmeqv.to(dtype)


__all__ = [
    "CENTER_EPS",
    "ORTH_EPS",
    "PADDING_MODES",
    "batch_get_centers",
    "concentration_loss",
    "coordinate_axes",
    "equivariance_losses",
    "orthonormal_loss",
    "part_probabilities",
    "radial_basis",
    "semantic_consistency_loss",
    "semantic_consistency_loss_lowres",
    "target_points",
    "tps_features",
    "tps_grid",
    "tps_mapping",
    "tps_warp",
    "upsample_features",
]
