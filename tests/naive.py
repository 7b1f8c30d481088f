"""Deliberately naive float64 forms of SPEC.md, written from its formulas with
explicit per-(b, k) loops, as a second opinion on scops_fast.reference.

Nothing here may import scops_fast: it must not share a bug with the code it checks.
"""

import itertools
import math

import torch


def coords(h, w):
    """x[i, j] = 2j/W - 1, y[i, j] = 2i/H - 1 as (H, W) maps."""
    x = torch.empty(h, w, dtype=torch.float64)
    y = torch.empty(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            x[i, j] = 2 * j / w - 1
            y[i, j] = 2 * i / h - 1
    return x, y


def softmax_parts(pred):
    e = torch.exp(pred - pred.max(dim=1, keepdim=True).values)
    return (e / e.sum(dim=1, keepdim=True))[:, 1:]


def centers(parts):
    b_, k_, h, w = parts.shape
    x, y = coords(h, w)
    rows = []
    for b in range(b_):
        row = []
        for k in range(k_):
            m = parts[b, k] + 1e-3
            pdf = m / m.sum()
            row.append(torch.stack(((pdf * x).sum(), (pdf * y).sum())))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def concentration(pred):
    parts = softmax_parts(pred)
    b_, k_, h, w = parts.shape
    x, y = coords(h, w)
    total = 0.0
    for b in range(b_):
        for k in range(k_):
            m = parts[b, k] + 1e-3
            pdf = m / m.sum()
            cx, cy = (pdf * x).sum(), (pdf * y).sum()
            total = total + (pdf * ((x - cx) ** 2 + (y - cy) ** 2)).sum()
    return total / b_**2


def semantic(features, pred, basis):
    parts = softmax_parts(pred)
    b_, k_ = parts.shape[:2]
    total = 0.0
    for b in range(b_):
        recon = torch.zeros_like(features[b])
        for k in range(k_):
            recon = recon + parts[b, k][None] * basis[k][:, None, None]
        total = total + ((recon - features[b]) ** 2).sum()
    return total / features.numel()


def upsample(feat, h, w):
    """Bilinear, align_corners=True: output (i, j) reads input at i*(h0-1)/(H-1)."""
    b_, c, h0, w0 = feat.shape
    out = torch.zeros(b_, c, h, w, dtype=feat.dtype)
    for i in range(h):
        sy = i * (h0 - 1) / (h - 1) if h > 1 else 0.0
        y0 = min(int(math.floor(sy)), h0 - 1)
        y1 = min(y0 + 1, h0 - 1)
        fy = sy - y0
        for j in range(w):
            sx = j * (w0 - 1) / (w - 1) if w > 1 else 0.0
            x0 = min(int(math.floor(sx)), w0 - 1)
            x1 = min(x0 + 1, w0 - 1)
            fx = sx - x0
            out[:, :, i, j] = (
                (1 - fy) * (1 - fx) * feat[:, :, y0, x0]
                + (1 - fy) * fx * feat[:, :, y0, x1]
                + fy * (1 - fx) * feat[:, :, y1, x0]
                + fy * fx * feat[:, :, y1, x1]
            )
    return out


def semantic_lowres(features, pred, basis, saliency=None):
    h, w = pred.shape[2:]
    v = torch.cat([upsample(f, h, w) for f in features], dim=1)
    if saliency is not None:
        v = v * saliency[:, None]
    return semantic(v, pred, basis)


def orthonormal(w):
    k_ = w.shape[0]
    wn = torch.stack([w[k] / torch.sqrt((w[k] ** 2).sum() + 1e-6) for k in range(k_)])
    total = 0.0
    for k in range(k_):
        for m in range(k_):
            total = total + ((wn[k] * wn[m]).sum() - (1.0 if k == m else 0.0)) ** 2
    return total


TARGET = [(float(a), float(b)) for a, b in itertools.product((-1, -0.5, 0, 0.5, 1), repeat=2)]


def radial(d2):
    return 0.0 if d2 == 0 else 0.5 * d2 * math.log(d2)


def tps_grid(source, h, w):
    kernel = torch.zeros(28, 28, dtype=torch.float64)
    for a, ta in enumerate(TARGET):
        for b, tb in enumerate(TARGET):
            kernel[a, b] = radial((ta[0] - tb[0]) ** 2 + (ta[1] - tb[1]) ** 2)
        kernel[a, 25] = kernel[25, a] = 1.0
        kernel[a, 26] = kernel[26, a] = ta[0]
        kernel[a, 27] = kernel[27, a] = ta[1]
    grids = []
    for b in range(source.shape[0]):
        rhs = torch.cat((source[b].to(torch.float64), torch.zeros(3, 2, dtype=torch.float64)))
        mapping = torch.linalg.solve(kernel, rhs)
        grid = torch.zeros(h, w, 2, dtype=torch.float64)
        for i in range(h):
            for j in range(w):
                gx = 2 * j / (w - 1) - 1 if w > 1 else -1.0
                gy = 2 * i / (h - 1) - 1 if h > 1 else -1.0
                feat = [radial((gx - t[0]) ** 2 + (gy - t[1]) ** 2) for t in TARGET] + [1, gx, gy]
                grid[i, j] = torch.tensor(feat, dtype=torch.float64) @ mapping
        grids.append(grid)
    return torch.stack(grids)


def bilinear_sample(x, grid, padding):
    """grid_sample(bilinear, align_corners=True) by its definition, one pixel at a time."""
    b_, c, h, w = x.shape
    out = torch.zeros(b_, c, grid.shape[1], grid.shape[2], dtype=x.dtype)
    for b in range(b_):
        for i in range(grid.shape[1]):
            for j in range(grid.shape[2]):
                px = (float(grid[b, i, j, 0]) + 1) / 2 * (w - 1)
                py = (float(grid[b, i, j, 1]) + 1) / 2 * (h - 1)
                if padding == "border":
                    px = min(max(px, 0.0), w - 1.0)
                    py = min(max(py, 0.0), h - 1.0)
                x0, y0 = math.floor(px), math.floor(py)
                acc = torch.zeros(c, dtype=x.dtype)
                for dy in (0, 1):
                    for dx in (0, 1):
                        xi, yi = x0 + dx, y0 + dy
                        weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
                        if 0 <= xi < w and 0 <= yi < h and weight != 0:
                            acc = acc + weight * x[b, :, yi, xi]
                out[b, :, i, j] = acc
    return out


def tps_warp(x, source, padding="zeros"):
    return bilinear_sample(x, tps_grid(source, x.shape[2], x.shape[3]), padding)


def equivariance(pred, pred_tps, source, padding="zeros"):
    warped = tps_warp(pred, source, padding)
    q = softmax_parts_full(warped.detach())
    logp = torch.log(softmax_parts_full(pred_tps))
    total = 0.0
    for b in range(pred.shape[0]):
        for k in range(pred.shape[1]):
            qk = q[b, k]
            total = total + torch.where(qk > 0, qk * (torch.log(qk) - logp[b, k]), 0.0).sum()
    loss_eqv = total / pred.numel()
    diff = centers(softmax_parts(pred_tps)) - centers(softmax_parts(warped))
    return loss_eqv, (diff**2).sum() / diff.numel()


def softmax_parts_full(pred):
    e = torch.exp(pred - pred.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)
