"""Evaluating part segmentations: landmark regression (SPEC §9), NMI/ARI, IoU, baselines.

Everything here takes part maps in the model's layout, (N, K+1, H, W) softmax probabilities with
channel 0 the background, and landmarks as pixel (x, y) in the maps' resolution.
"""

from .baselines import KMeansPartBaseline, kmeans, kmeans_baseline, one_part_baseline
from .clustering import (
    adjusted_rand_index,
    ari_from_table,
    contingency_table,
    nmi_from_table,
    normalized_mutual_info,
)
from .compare import evaluate_with_baselines
from .evaluate import PartEvaluator, evaluate_dataset, evaluate_predictions
from .landmarks import fit_landmark_regressor, landmark_regression_error, part_centers_pixels
from .segmentation import (
    dense_part_nmi_ari,
    foreground_iou,
    keypoint_nmi_ari,
    keypoint_part_labels,
)

__all__ = [
    "KMeansPartBaseline",
    "PartEvaluator",
    "adjusted_rand_index",
    "ari_from_table",
    "contingency_table",
    "dense_part_nmi_ari",
    "evaluate_dataset",
    "evaluate_predictions",
    "evaluate_with_baselines",
    "fit_landmark_regressor",
    "foreground_iou",
    "keypoint_nmi_ari",
    "keypoint_part_labels",
    "kmeans",
    "kmeans_baseline",
    "landmark_regression_error",
    "nmi_from_table",
    "normalized_mutual_info",
    "one_part_baseline",
    "part_centers_pixels",
]
