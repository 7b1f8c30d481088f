"""A model against the two baselines, on the same data, in one pass: the numbers of
`metrics.json` and of `scops-eval`.

For every batch of items the model's part maps and the two baselines' maps go into three
`PartEvaluator`s, so the model and the baselines are scored by the same code on the same images:

- `one_part`: one part everywhere (`one_part_baseline` on an all-ones mask): every part centre is
  the image centre, so the landmark regression can only learn the mean landmark positions;
- `kmeans`: K parts from k-means on the foreground's normalised pixel coordinates
  (`KMeansPartBaseline`), fitted on the train split (the test split when there is none).
  Its foreground is the items' ground-truth `fg` where they have one (synthetic data: an oracle
  mask the model never sees, which makes this baseline stronger, not weaker), else their
  `saliency` thresholded at 0.5, else the whole image.

`criteria` compares the model with the k-means baseline: landmark error ratio (pass at most
`LANDMARK_RATIO_MAX`) and the dense foreground part NMI margin (pass at least `NMI_MARGIN_MIN`).
"""

from __future__ import annotations

import math
import time

import torch

from .baselines import KMeansPartBaseline, one_part_baseline
from .evaluate import evaluate_many, item_batches, item_count, model_probs, stack_items

__all__ = [
    "LANDMARK_RATIO_MAX",
    "NMI_MARGIN_MIN",
    "baseline_foreground",
    "criteria",
    "evaluate_with_baselines",
]

#: The model passes when its landmark error is at most this fraction of the k-means baseline's ...
LANDMARK_RATIO_MAX = 0.8
#: ... and its dense foreground part NMI at least the k-means baseline's plus this.
NMI_MARGIN_MIN = 0.10

BASELINE_NOTES = {
    "one_part": "one part everywhere: every part centre is the image centre",
    "kmeans": "k-means with K clusters on the foreground's pixel coordinates (normalised by the "
    "foreground's centroid and RMS radius), fitted on the train split; foreground: {fg}",
}


def baseline_foreground(items: list[dict]) -> tuple[torch.Tensor, str]:
    """(B, H, W) bool foreground for the baselines, and where it came from."""
    fg = stack_items(items, "fg")
    if fg is not None:
        return fg.bool(), "ground-truth fg"
    sal = stack_items(items, "saliency")
    if sal is not None:
        return sal.float() > 0.5, "saliency > 0.5"
    img = stack_items(items, "img")
    return torch.ones(img.shape[0], *img.shape[-2:], dtype=torch.bool), "whole image"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def criteria(model: dict, kmeans: dict) -> dict:
    """The pass/fail fields of the model against the k-means baseline (keys present when both
    sides have the numbers)."""
    out: dict = {}
    if "landmark_error_test" in model and "landmark_error_test" in kmeans:
        ratio = _ratio(model["landmark_error_test"], kmeans["landmark_error_test"])
        out["landmark_error_ratio_vs_kmeans"] = ratio
        out["landmark_ratio_max"] = LANDMARK_RATIO_MAX
        out["landmark_ok"] = bool(ratio <= LANDMARK_RATIO_MAX)
    if "part_nmi" in model and "part_nmi" in kmeans:
        margin = model["part_nmi"] - kmeans["part_nmi"]
        out["part_nmi_margin_vs_kmeans"] = margin
        out["nmi_margin_min"] = NMI_MARGIN_MIN
        out["nmi_ok"] = bool(margin >= NMI_MARGIN_MIN)
    checks = [out[k] for k in ("landmark_ok", "nmi_ok") if k in out]
    out["passed"] = bool(checks) and all(checks)
    return out


@torch.no_grad()
def evaluate_with_baselines(
    predict,
    train_set,
    test_set,
    num_parts: int,
    *,
    batch_size: int = 16,
    limit: int | None = None,
    kmeans_fit_images: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Scores of `predict` and of the two baselines on the same items.

    predict: callable (B, 3, H, W) images in [0, 1] -> (B, K+1, h, w) softmax probabilities,
        channel 0 background; maps of another size are resized (bilinear, align_corners=True)
        to the images'.
    train_set: items with `landmarks`, only for fitting the landmark regressors and the k-means
        centres (None: no regression; k-means fitted on the test split).
    test_set: items with any of `landmarks` (+ `visible`), `parts`, `fg`, `saliency`.
    num_parts: K of the k-means baseline (the model's K).
    limit: at most this many items of each set; kmeans_fit_images: the k-means baseline is fitted
        on the foregrounds of the first this-many items.
    progress: a progress bar over the images on a terminal.

    Returns {"model": {...}, "baselines": {"one_part": {...}, "kmeans": {...}},
    "baseline_notes": {...}, "criteria": {...}, "eval_seconds": float}; the inner dicts have the
    keys of `PartEvaluator.compute`. As `evaluate_dataset`, the landmark regression runs only
    when every landmark of both splits is finite.
    """
    t0 = time.perf_counter()
    fit_set = train_set if train_set is not None else test_set
    fit_n = min(kmeans_fit_images, item_count(fit_set, limit))
    fit_masks, fg_source = [], None
    for items in item_batches(fit_set, batch_size, fit_n):
        mask, fg_source = baseline_foreground(items)
        fit_masks.append(mask)
    kmeans = KMeansPartBaseline(num_parts, seed=seed).fit(torch.cat(fit_masks))

    def all_probs(items):
        fg, _ = baseline_foreground(items)
        return {
            "model": model_probs(predict, items),
            "one_part": one_part_baseline(torch.ones_like(fg)),
            "kmeans": kmeans.predict(fg),
        }

    names = ("model", "one_part", "kmeans")
    results = evaluate_many(names, all_probs, train_set, test_set, batch_size, limit, progress)
    return {
        "model": results["model"],
        "baselines": {"one_part": results["one_part"], "kmeans": results["kmeans"]},
        "baseline_notes": {
            "one_part": BASELINE_NOTES["one_part"],
            "kmeans": BASELINE_NOTES["kmeans"].format(fg=fg_source),
        },
        "criteria": criteria(results["model"], results["kmeans"]),
        "eval_seconds": time.perf_counter() - t0,
    }
