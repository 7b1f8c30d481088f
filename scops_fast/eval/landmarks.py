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


def _as_float_array(a, name: str, layout: str) -> np.ndarray:
    """A tensor, NumPy array or nested list of real numbers -> float64 array. Tensors and
    arrays must have a floating dtype (bool, integer and complex ones are refused)."""
    if isinstance(a, torch.Tensor):
        if a.layout != torch.strided:
            raise TypeError(f"{name}: expected a dense tensor {layout}, got layout {a.layout}")
        if a.device.type == "meta":
            raise ValueError(f"{name}: expected a tensor with data {layout}, got a meta tensor")
        if not a.is_floating_point():
            raise TypeError(f"{name}: expected floating-point values {layout}, got dtype {a.dtype}")
        return a.detach().cpu().double().numpy()
    if isinstance(a, np.ndarray):
        if a.dtype.kind != "f":
            raise TypeError(f"{name}: expected floating-point values {layout}, got dtype {a.dtype}")
        return a.astype(np.float64)
    if isinstance(a, (list, tuple)):
        try:
            return np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name}: expected numbers {layout}, got a list that is not: {exc}"
            ) from None
    raise TypeError(f"{name}: expected an array or tensor {layout}, got {type(a).__name__}")


def _as_points(a, name: str) -> np.ndarray:
    a = _as_float_array(a, name, "(N, points, 2)")
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"{name}: expected shape (N, points, 2), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one image and one point, got shape {a.shape}")
    if not np.isfinite(a).all():
        hint = " (a part with no mass gives NaN)" if "pred" in name else ""
        raise ValueError(f"{name}: expected finite values{hint}, got NaN or inf")
    return a


def _check_same(what: str, name_a: str, a: int, name_b: str, b: int) -> None:
    if a != b:
        raise ValueError(f"{name_b}: expected {a} {what} (as {name_a}), got {b}")


def _as_scales(scales, name: str, n: int) -> np.ndarray:
    s = _as_float_array(scales, name, f"({n},)").reshape(-1)
    if s.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values, got {s.shape[0]} normaliser values")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"{name}: expected finite, non-negative scales, got {s.tolist()[:5]}")
    return s


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
    _check_same("images", "train_pred", len(xp), "train_gt", len(yg))
    x, y = xp.reshape(len(xp), -1), yg.reshape(len(yg), -1)
    x_mean, x_std = _standardiser(x)
    y_mean, y_std = _standardiser(y)
    design = np.concatenate([(x - x_mean) / x_std, np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, (y - y_mean) / y_std, rcond=None)
    n_points = xp.shape[1]
    landmark_shape = yg.shape[1:]

    def predict(pred, name="pred"):
        p = _as_points(pred, name)
        if p.shape[1] != n_points:
            raise ValueError(
                f"{name}: expected {n_points} points per image (as in the fit), got {p.shape[1]}"
            )
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
    te_pred = _as_points(test_pred, "test_pred")
    _check_same("images", "test_pred", len(te_pred), "test_gt", len(te_gt))
    _check_same("landmarks per image", "train_gt", tr_gt.shape[1], "test_gt", te_gt.shape[1])
    _check_same(
        "points per image",
        "train_pred",
        _as_points(train_pred, "train_pred").shape[1],
        "test_pred",
        te_pred.shape[1],
    )
    if isinstance(normalizer, str):
        if normalizer != "iod":
            raise ValueError(
                f'normalizer: expected "iod" or (train_scales, test_scales), got {normalizer!r}'
            )
        if tr_gt.shape[1] < 2:
            raise ValueError(
                'normalizer="iod": expected at least two landmarks (the eyes) in train_gt, '
                f"got {tr_gt.shape[1]}"
            )
        tr_scale = te_scale = None
    else:
        try:
            tr_scale, te_scale = normalizer
        except (TypeError, ValueError):
            raise ValueError(
                'normalizer: expected "iod" or a pair (train_scales, test_scales), '
                f"got {type(normalizer).__name__}"
            ) from None
        tr_scale = _as_scales(tr_scale, "normalizer[0] (train scales)", len(tr_gt))
        te_scale = _as_scales(te_scale, "normalizer[1] (test scales)", len(te_gt))
    train_err = _normalised_errors(predict(train_pred, "train_pred"), tr_gt, tr_scale).mean()
    test_err = _normalised_errors(predict(te_pred, "test_pred"), te_gt, te_scale).mean()
    return float(train_err), float(test_err)
