"""Landmarks from part maps, and the linear landmark regression of SCOPS (SPEC §9)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["part_centers_pixels", "landmark_regression_error", "fit_landmark_regressor"]


def part_centers_pixels(part_probs: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Probability-weighted mean pixel position of every part.

    part_probs: (N, K, H, W) part maps (channel 0 of a (K+1)-channel softmax already dropped).
    Returns (N, K, 2), order (x, y), in pixels of the evaluated image: x is the column index j and
    y the row index i, so a mass concentrated on pixel (i, j) has centre (j, i). The sums run in
    float64; the result has `dtype`, default the input's floating dtype (float32 for integers).

    No epsilon is added (unlike the training loss's `batch_get_centers`): the paper's evaluator
    uses the raw weights. A part with zero total mass therefore yields NaN (0/0).
    """
    if part_probs.dim() != 4:
        raise ValueError(f"part_probs must be (N, K, H, W), got shape {tuple(part_probs.shape)}")
    p = part_probs.detach()
    if not p.is_floating_point():
        p = p.float()
    # float64 accumulation: a 256x256 map sums 65k terms, enough to lose float32 digits.
    p = p.double()
    h, w = p.shape[-2:]
    xs = torch.arange(w, dtype=p.dtype, device=p.device)
    ys = torch.arange(h, dtype=p.dtype, device=p.device)
    mass = p.sum(dim=(-2, -1))
    cx = (p.sum(dim=-2) * xs).sum(dim=-1) / mass
    cy = (p.sum(dim=-1) * ys).sum(dim=-1) / mass
    if dtype is None:
        dtype = part_probs.dtype if part_probs.is_floating_point() else torch.float32
    return torch.stack([cx, cy], dim=-1).to(dtype)


def _as_points(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name} must be (N, points, 2), got shape {a.shape}")
    return a


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    # A constant column (e.g. the one-part baseline's centres) carries no information; dividing by 1
    # keeps it at 0 instead of producing NaN, and lstsq's minimum-norm solution then ignores it.
    return mean, np.where(std > 0, std, 1.0)


def fit_landmark_regressor(train_pred, train_gt):
    """Fit the standardised OLS map from (N, K, 2) predicted points to (N, L, 2) landmarks.

    Returns a function mapping (M, K, 2) predicted points to (M, L, 2) regressed landmarks.
    """
    xp, yg = _as_points(train_pred, "train_pred"), _as_points(train_gt, "train_gt")
    if len(xp) != len(yg):
        raise ValueError(f"train_pred has {len(xp)} images but train_gt has {len(yg)}")
    if not np.isfinite(xp).all() or not np.isfinite(yg).all():
        raise ValueError("train_pred and train_gt must be finite (a part with no mass gives NaN)")
    x, y = xp.reshape(len(xp), -1), yg.reshape(len(yg), -1)
    x_mean, x_std = _standardiser(x)
    y_mean, y_std = _standardiser(y)
    design = np.concatenate([(x - x_mean) / x_std, np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, (y - y_mean) / y_std, rcond=None)
    n_points = xp.shape[1]
    landmark_shape = yg.shape[1:]

    def predict(pred):
        p = _as_points(pred, "pred")
        if p.shape[1] != n_points:
            raise ValueError(f"pred has {p.shape[1]} points per image, the fit used {n_points}")
        if not np.isfinite(p).all():
            raise ValueError("pred must be finite (a part with no mass gives NaN)")
        flat = p.reshape(len(p), -1)
        d = np.concatenate([(flat - x_mean) / x_std, np.ones((len(flat), 1))], axis=1)
        return ((d @ coef) * y_std + y_mean).reshape(len(p), *landmark_shape)

    return predict


def _normalised_errors(pred: np.ndarray, gt: np.ndarray, scale) -> np.ndarray:
    point_err = np.linalg.norm(pred - gt, axis=-1).mean(axis=1)
    if scale is None:
        scale = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    if scale.shape[0] != len(gt):
        raise ValueError(f"{scale.shape[0]} normaliser values for {len(gt)} images")
    # The original evaluator counts an image whose eyes coincide as 0 error rather than inf/NaN.
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, point_err / safe, 0.0)


def landmark_regression_error(train_pred, train_gt, test_pred, test_gt, normalizer="iod"):
    """SCOPS landmark regression error (SPEC §9) as fractions: (train_error, test_error).

    train_pred (N, K, 2), test_pred (M, K, 2): points from the model (e.g. part centres);
    train_gt (N, L, 2), test_gt (M, L, 2): annotated landmarks, same units as each other.
    Inputs (2K values) and targets (2L values) are standardised with the training set's mean and
    std, an OLS map with intercept is fitted on train, both splits are predicted and
    un-standardised, and an image's error is the mean Euclidean landmark error divided by its scale.

    normalizer: "iod" (|gt[0] - gt[1]|, the eyes for faces; a zero distance counts as error 0), or
    `(train_scales, test_scales)`, per-image scales (e.g. bounding-box sizes for birds).
    Multiply by 100 for the percentages of the paper.
    """
    predict = fit_landmark_regressor(train_pred, train_gt)
    tr_gt, te_gt = _as_points(train_gt, "train_gt"), _as_points(test_gt, "test_gt")
    if isinstance(normalizer, str):
        if normalizer != "iod":
            raise ValueError(
                f'normalizer must be "iod" or (train_scales, test_scales), got {normalizer!r}'
            )
        if tr_gt.shape[1] < 2:
            raise ValueError('normalizer="iod" needs at least two landmarks (the eyes)')
        tr_scale = te_scale = None
    else:
        try:
            tr_scale, te_scale = normalizer
        except (TypeError, ValueError):
            raise ValueError(
                'normalizer must be "iod" or a pair (train_scales, test_scales)'
            ) from None
        tr_scale = np.asarray(tr_scale.cpu() if isinstance(tr_scale, torch.Tensor) else tr_scale)
        te_scale = np.asarray(te_scale.cpu() if isinstance(te_scale, torch.Tensor) else te_scale)
    train_err = _normalised_errors(predict(train_pred), tr_gt, tr_scale).mean()
    test_err = _normalised_errors(predict(test_pred), te_gt, te_scale).mean()
    return float(train_err), float(test_err)
