"""The SCOPS losses, drop-in for the original `loss` module:

    from scops_fast import losses as loss

Each function validates its arguments, then makes one call into the backend that
`backend=` (or the process default) selects. The math lives in the backends;
`scops_fast.reference` is the oracle.
"""

from __future__ import annotations

import torch

from scops_fast import _validate as check
from scops_fast import reference as _ref
from scops_fast._dispatch import select


def concentration_loss(pred, *, backend=None):
    """Geometric concentration of each part around its centre (SPEC section 3).

    pred: logits (B, K+1, H, W), channel 0 background. Returns a scalar.
    """
    check.logits("pred", pred)
    return select("concentration_loss", backend, pred.device.type, (pred,))(pred)


def batch_get_centers(part_probs, *, backend=None):
    """Centres (x, y) in [-1, 1) coordinates of part maps (B, K, H, W) -> (B, K, 2)."""
    check.tensor("part_probs", part_probs, 4, "(B, K, H, W)")
    args = (part_probs,)
    return select("batch_get_centers", backend, part_probs.device.type, args)(*args)


def _check_basis(basis, pred, channels: int, channels_source: str):
    check.tensor("basis", basis, 2, "(K, C)")
    check.matching("basis", basis, 0, pred.shape[1] - 1, "K =", "pred's K+1 channels")
    check.matching("basis", basis, 1, channels, "C =", channels_source)


def semantic_consistency_loss(features, pred, basis, *, backend=None):
    """Mean squared error between the part-basis reconstruction `sum_k P_k W_k` and the
    features V (SPEC section 4).

    features: (B, C, H, W) at the resolution of pred; pred: logits (B, K+1, H, W);
    basis: (K, C). Gradients reach pred and basis, and features where they require grad (as in
    the original, whose trainer computes them without a graph): the fused kernels take
    features as constants and refuse ones that require grad, and "auto" runs the reference.
    """
    check.logits("pred", pred)
    check.tensor("features", features, 4, "(B, C, H, W)")
    check.spatial_like("features", features, "pred", pred)
    _check_basis(basis, pred, features.shape[1], "features")
    check.same_device(pred=pred, features=features, basis=basis)
    args = (features, pred, basis)
    return select("semantic_consistency_loss", backend, pred.device.type, args)(*args)


def semantic_consistency_loss_lowres(features, pred, basis, saliency=None, *, backend=None):
    """`semantic_consistency_loss` against `saliency * upsample(features)`, exact, without
    the full-resolution feature map where the backend allows.

    features: (B, C, h, w) or a list of such maps (concatenated along C after bilinear,
    align_corners=True upsampling to pred's H, W); saliency: optional (B, H, W) in [0, 1].
    """
    check.logits("pred", pred)
    maps = check.feature_list("features", features)
    for i, f in enumerate(maps):
        check.matching(
            "features" if len(maps) == 1 else f"features[{i}]",
            f,
            0,
            pred.shape[0],
            "batch size",
            "pred",
        )
    _check_basis(basis, pred, sum(f.shape[1] for f in maps), "the channels of features")
    if saliency is not None:
        if torch.is_tensor(saliency) and saliency.dim() == 4 and saliency.shape[1] == 1:
            saliency = saliency[:, 0]
        check.tensor("saliency", saliency, 3, "(B, H, W)")
        check.spatial_like("saliency", saliency, "pred", pred)
    tensors = {f"features[{i}]": f for i, f in enumerate(maps)}
    check.same_device(pred=pred, basis=basis, saliency=saliency, **tensors)
    args = (maps, pred, basis, saliency)
    return select("semantic_consistency_loss_lowres", backend, pred.device.type, args)(*args)


def orthonormal_loss(w):
    """`sum((wn wn^T - I)^2)` of the row-normalised basis (SPEC section 5); a sum, not a mean."""
    check.tensor("w", w, 2, "(K, C)")
    return _ref.orthonormal_loss(w)


# The original module's spelling.
orthonomal_loss = orthonormal_loss


#: The original module's `softmax`: a module that takes the softmax over dim 1 (channels).
softmax = torch.nn.Softmax(dim=1)


def get_variance(part_map, x_c, y_c):
    """The original module's `get_variance`: (v_x, v_y) = (sum p (x - x_c)^2, sum p (y - y_c)^2)
    of a part map p (H, W) (a density) around the centre (x_c, y_c), with the coordinates of
    SPEC section 1 built in float32 as the original's are (float64 maps promote them)."""
    check.tensor("part_map", part_map, 2, "(H, W)")
    h, w = part_map.shape
    # Rounded like the original's: float64 j / W * 2 - 1, then float32.
    x = (torch.arange(w, dtype=torch.float64, device=part_map.device) / w * 2 - 1).float()
    y = (torch.arange(h, dtype=torch.float64, device=part_map.device) / h * 2 - 1).float()
    v_x = (part_map * ((x - x_c) * (x - x_c))[None, :]).sum()
    v_y = (part_map * ((y - y_c) * (y - y_c))[:, None]).sum()
    return v_x, v_y


def equivariance_losses(pred, pred_tps, source_points, *, padding_mode="zeros", backend=None):
    """(L_eqv, L_lmeqv) of SPEC section 7.

    pred: logits of the images (B, K+1, H, W); pred_tps: logits of the warped images,
    same shape; source_points: the warp's (B, 25, 2) source control points.
    """
    check.logits("pred", pred)
    check.logits("pred_tps", pred_tps)
    if pred_tps.shape != pred.shape:
        raise ValueError(
            f"pred_tps: expected the shape of pred {tuple(pred.shape)}, got {tuple(pred_tps.shape)}"
        )
    check.source_points("source_points", source_points, pred.shape[0])
    check.padding_mode(padding_mode)
    check.same_device(pred=pred, pred_tps=pred_tps, source_points=source_points)
    args = (pred, pred_tps, source_points, padding_mode)
    return select("equivariance_losses", backend, pred.device.type, args)(*args)


__all__ = [
    "batch_get_centers",
    "concentration_loss",
    "equivariance_losses",
    "get_variance",
    "orthonomal_loss",
    "orthonormal_loss",
    "semantic_consistency_loss",
    "semantic_consistency_loss_lowres",
    "softmax",
]
