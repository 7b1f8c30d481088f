"""Part-map baselines in the model's format, (N, K+1, H, W) with channel 0 the background.

- `one_part_baseline`: the whole foreground is one part. With `fg` all ones this is "one part
  everywhere": every part centre is the image centre, so the landmark regression can only learn the
  mean landmark positions. With a saliency mask it predicts from the foreground's centroid.
- `KMeansPartBaseline`: K parts from the foreground's shape alone. Each image's foreground pixel
  coordinates are normalised by the foreground centroid and RMS radius (removing translation and
  scale); one global k-means over these normalised coordinates, pooled over the fit images, gives
  K cluster centres; every image's foreground pixels take the label of the nearest centre. Being
  global, the labels mean the same relative position in every image (a per-image k-means would
  need its clusters matched across images). Centres are numbered 1..K by angle around the
  foreground centroid (atan2 of the normalised (y, x), increasing), starting from the +x axis.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["kmeans", "one_part_baseline", "KMeansPartBaseline", "kmeans_baseline"]


def _as_fg(fg, threshold: float = 0.5) -> torch.Tensor:
    fg = torch.as_tensor(fg)
    if fg.dim() != 3:
        raise ValueError(f"fg must be (N, H, W), got shape {tuple(fg.shape)}")
    # A float saliency map is thresholded; bool / integer masks are used as they are.
    return fg > threshold if fg.is_floating_point() else fg.bool()


def kmeans(points, k: int, seed: int = 0, n_iter: int = 100, tol: float = 1e-7):
    """Lloyd's k-means with k-means++ initialisation, seeded; numpy only.

    points: (M, D). Returns (centres (k, D), labels (M,)). An emptied cluster is moved to the
    point farthest from its centre, so k centres always come back when M >= k.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or len(x) < k or k < 1:
        raise ValueError(f"kmeans needs (M, D) points with M >= k >= 1, got {x.shape} and k={k}")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for c in range(1, k):
        total = d2.sum()
        idx = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres[c] = x[idx]
        d2 = np.minimum(d2, ((x - centres[c]) ** 2).sum(1))
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(n_iter):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        labels = dist.argmin(1)
        new = centres.copy()
        for c in range(k):
            members = labels == c
            if members.any():
                new[c] = x[members].mean(0)
            else:
                far = dist[np.arange(len(x)), labels].argmax()
                new[c] = x[far]
                labels[far] = c
        shift = ((new - centres) ** 2).sum()
        centres = new
        if shift <= tol:
            break
    dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    return centres, dist.argmin(1)


def one_part_baseline(fg) -> torch.Tensor:
    """(N, 2, H, W) maps: part 1 on the foreground, background elsewhere.

    fg: (N, H, W) bool mask or float saliency (thresholded at 0.5). Pass `torch.ones(N, H, W)` for
    "one part everywhere".
    """
    mask = _as_fg(fg).float()
    return torch.stack([1.0 - mask, mask], dim=1)


def _normalised_fg_coords(mask: torch.Tensor):
    """Per image: foreground pixel indices and their (x, y) normalised by centroid, RMS radius."""
    out = []
    for m in mask:
        ii, jj = m.nonzero(as_tuple=True)
        if len(ii) == 0:
            out.append((ii, jj, np.zeros((0, 2))))
            continue
        xy = torch.stack([jj, ii], 1).double().numpy()
        centred = xy - xy.mean(0)
        radius = np.sqrt((centred**2).sum(1).mean())
        out.append((ii, jj, centred / (radius if radius > 0 else 1.0)))
    return out


class KMeansPartBaseline:
    """K parts from the foreground's normalised pixel coordinates (see the module docstring).

    `fit(fg)` learns the global centres, `predict(fg)` returns (N, K+1, H, W) one-hot maps.
    """

    def __init__(self, k: int, seed: int = 0, max_points: int = 100_000):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.seed, self.max_points = k, seed, max_points
        self.centres: np.ndarray | None = None

    def fit(self, fg) -> KMeansPartBaseline:
        coords = [c for _, _, c in _normalised_fg_coords(_as_fg(fg))]
        pooled = np.concatenate(coords) if coords else np.zeros((0, 2))
        if len(pooled) < self.k:
            raise ValueError(f"{len(pooled)} foreground pixels cannot make {self.k} clusters")
        rng = np.random.default_rng(self.seed)
        if len(pooled) > self.max_points:
            pooled = pooled[rng.choice(len(pooled), self.max_points, replace=False)]
        centres, _ = kmeans(pooled, self.k, seed=self.seed)
        order = np.argsort(
            np.mod(np.arctan2(centres[:, 1], centres[:, 0]), 2 * np.pi), kind="stable"
        )
        self.centres = centres[order]
        return self

    def predict(self, fg) -> torch.Tensor:
        if self.centres is None:
            raise RuntimeError("call fit() before predict()")
        mask = _as_fg(fg)
        n, h, w = mask.shape
        labels = torch.zeros(n, h, w, dtype=torch.long)
        for b, (ii, jj, coords) in enumerate(_normalised_fg_coords(mask)):
            if len(coords):
                d2 = ((coords[:, None, :] - self.centres[None]) ** 2).sum(-1)
                labels[b, ii, jj] = torch.from_numpy(d2.argmin(1) + 1)
        return torch.nn.functional.one_hot(labels, self.k + 1).permute(0, 3, 1, 2).float()


def kmeans_baseline(fg, k: int, seed: int = 0) -> torch.Tensor:
    """Fit `KMeansPartBaseline` on `fg` and predict it: (N, K+1, H, W) one-hot maps."""
    return KMeansPartBaseline(k, seed=seed).fit(fg).predict(fg)
