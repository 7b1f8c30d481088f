"""Label-level metrics of predicted part maps: keypoint and dense part labels, foreground IoU.

Predicted part maps are (N, K+1, H, W) with channel 0 the background, the model's layout. The
predicted label of a pixel is the arg-max over all K+1 channels, so background is a label too:
a keypoint (or ground-truth part pixel) that the model calls background counts as label 0.
"""

from __future__ import annotations

import numpy as np
import torch

from .clustering import ari_from_table, contingency_table, nmi_from_table

__all__ = [
    "argmax_labels",
    "keypoint_part_labels",
    "keypoint_nmi_ari",
    "dense_part_labels",
    "dense_part_nmi_ari",
    "foreground_iou",
]


def argmax_labels(part_maps: torch.Tensor) -> torch.Tensor:
    """(N, K+1, H, W) maps -> (N, H, W) arg-max labels; (N, H, W) integer labels pass through."""
    if part_maps.dim() == 3 and not part_maps.is_floating_point():
        return part_maps.long()
    if part_maps.dim() != 4:
        raise ValueError(f"part maps must be (N, K+1, H, W), got shape {tuple(part_maps.shape)}")
    return part_maps.argmax(dim=1)


def keypoint_part_labels(part_maps, keypoints, visible=None):
    """Predicted part label at each visible keypoint, and the keypoint's id.

    part_maps: (N, K+1, H, W) maps or (N, H, W) labels. keypoints: (N, L, 2) pixel (x, y) in the
    maps' resolution, read at the nearest pixel. visible: (N, L) bool, default all; keypoints
    outside the image or not finite are treated as not visible.
    Returns (pred_labels, keypoint_ids), two 1-D int64 arrays of equal length.
    """
    labels = argmax_labels(torch.as_tensor(part_maps))
    kp = torch.as_tensor(keypoints, dtype=torch.float64).to(labels.device)
    n, h, w = labels.shape
    if kp.dim() != 3 or kp.shape[0] != n or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be ({n}, L, 2), got shape {tuple(kp.shape)}")
    vis = torch.ones(kp.shape[:2], dtype=torch.bool, device=labels.device)
    if visible is not None:
        vis = torch.as_tensor(visible, device=labels.device).bool()
        if vis.shape != kp.shape[:2]:
            raise ValueError(f"visible must be {tuple(kp.shape[:2])}, got {tuple(vis.shape)}")
    j = torch.round(kp[..., 0])
    i = torch.round(kp[..., 1])
    inside = torch.isfinite(j) & torch.isfinite(i) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    keep = vis & inside
    img_idx, kp_idx = keep.nonzero(as_tuple=True)
    pred = labels[img_idx, i[keep].long(), j[keep].long()]
    return pred.cpu().numpy().astype(np.int64), kp_idx.cpu().numpy().astype(np.int64)


def keypoint_nmi_ari(part_maps, keypoints, visible=None) -> tuple[float, float]:
    """NMI and ARI between the predicted part at each visible keypoint and the keypoint's id."""
    pred, ids = keypoint_part_labels(part_maps, keypoints, visible)
    table = contingency_table(pred, ids)
    return nmi_from_table(table), ari_from_table(table)


def dense_part_labels(part_maps, gt_parts, fg=None):
    """Predicted and ground-truth labels of the pixels inside the foreground.

    gt_parts: (N, H, W) integer part ids, 0 background. fg: (N, H, W) bool, default gt_parts > 0.
    Returns (pred_labels, gt_labels), 1-D int64 arrays.
    """
    labels = argmax_labels(torch.as_tensor(part_maps))
    gt = torch.as_tensor(gt_parts).to(labels.device).long()
    if gt.shape != labels.shape:
        raise ValueError(f"gt_parts must be {tuple(labels.shape)}, got {tuple(gt.shape)}")
    mask = gt > 0 if fg is None else torch.as_tensor(fg).to(labels.device).bool()
    if mask.shape != labels.shape:
        raise ValueError(f"fg must be {tuple(labels.shape)}, got {tuple(mask.shape)}")
    return labels[mask].cpu().numpy(), gt[mask].cpu().numpy()


def dense_part_nmi_ari(part_maps, gt_parts, fg=None) -> tuple[float, float]:
    """NMI and ARI of predicted arg-max parts vs ground-truth part ids inside the foreground."""
    pred, gt = dense_part_labels(part_maps, gt_parts, fg)
    table = contingency_table(pred, gt)
    return nmi_from_table(table), ari_from_table(table)


def foreground_iou(part_maps, gt_fg) -> tuple[np.ndarray, int, int]:
    """Foreground IoU per image; predicted foreground is arg-max != 0.

    Returns (per_image_iou (N,), total_intersection, total_union). An image where both masks are
    empty has IoU 1 (nothing to find, nothing found).
    """
    labels = argmax_labels(torch.as_tensor(part_maps))
    gt = torch.as_tensor(gt_fg).to(labels.device).bool()
    if gt.shape != labels.shape:
        raise ValueError(f"gt_fg must be {tuple(labels.shape)}, got {tuple(gt.shape)}")
    pred = labels != 0
    inter = (pred & gt).flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return iou.cpu().numpy(), int(inter.sum()), int(union.sum())
