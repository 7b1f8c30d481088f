"""All the evaluation numbers of a set of predicted part maps, accumulated batch by batch.

A trainer streams batches into a `PartEvaluator` (nothing of size (N, K+1, H, W) is kept: only part
centres, landmarks and contingency tables), then calls `compute()`. `evaluate_predictions` is the
one-call form for predictions that fit in memory.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .clustering import add_tables, ari_from_table, contingency_table, nmi_from_table
from .landmarks import landmark_regression_error, part_centers_pixels
from .segmentation import dense_part_labels, foreground_iou, keypoint_part_labels

__all__ = ["PartEvaluator", "evaluate_predictions", "evaluate_dataset"]


def _probs(part_probs) -> torch.Tensor:
    p = torch.as_tensor(part_probs).detach()
    if p.dim() != 4 or p.shape[1] < 2:
        raise ValueError(f"part probabilities must be (N, K+1, H, W), K >= 1, got {tuple(p.shape)}")
    return p.float() if not p.is_floating_point() else p


def _centres(p: torch.Tensor) -> tuple[np.ndarray, int]:
    """Part centres in pixels; a part with no mass gets the image centre (and is counted)."""
    c = part_centers_pixels(p[:, 1:], dtype=torch.float64).cpu().numpy()
    h, w = p.shape[-2:]
    bad = ~np.isfinite(c).all(-1)
    c[bad] = ((w - 1) / 2.0, (h - 1) / 2.0)
    return c, int(bad.sum())


class PartEvaluator:
    """Accumulates predictions of both splits, then `compute()` returns a dict of floats.

    Train split (only for fitting the landmark regressor): `add_train(probs, landmarks, scales)`.
    Test split: `add_test(probs, landmarks=None, scales=None, parts=None, fg=None,
    keypoints=None, visible=None)`.

    probs: (B, K+1, H, W) softmax probabilities, channel 0 background (not logits).
    landmarks: (B, L, 2) pixel (x, y) in the probs' resolution; scales: (B,) per-image normalisers
    when `normalizer="scales"` (e.g. bounding-box sizes), else the inter-ocular distance
    |landmarks[0] - landmarks[1]| is used. parts: (B, H, W) ground-truth part ids (0 background);
    fg: (B, H, W) ground-truth foreground (default parts > 0). keypoints / visible: points whose
    predicted part is compared with their id for the keypoint NMI/ARI (default: the landmarks,
    all visible).

    Keys of `compute()` (present when their inputs were given):
      n_train, n_test, empty_parts (part maps with no mass, given the image centre);
      landmark_error_train, landmark_error_test: SPEC §9 regression error, fractions (x100 for %);
      keypoint_nmi, keypoint_ari: arg-max label (background included) at visible test keypoints vs
        keypoint id;
      keypoint_fg_nmi, keypoint_fg_ari: the same over the keypoints whose arg-max label is a part
        (background predictions left out); keypoint_on_background: the fraction left out;
      part_nmi, part_ari: arg-max label vs ground-truth part id over ground-truth foreground pixels;
      part_nmi_full, part_ari_full: the same over every pixel, background (0) a label on both
        sides;
      fg_iou: mean over test images of the IoU of (arg-max != 0) with fg; fg_iou_pooled: total
        intersection / total union over the test set.
    """

    def __init__(self, normalizer: str = "iod"):
        if normalizer not in ("iod", "scales"):
            raise ValueError(f'normalizer must be "iod" or "scales", got {normalizer!r}')
        self.normalizer = normalizer
        self._centres = {"train": [], "test": []}
        self._landmarks = {"train": [], "test": []}
        self._scales = {"train": [], "test": []}
        self._count = {"train": 0, "test": 0}
        self._empty_parts = 0
        self._kp_table = None
        self._part_table = None
        self._full_table = None
        self._ious: list[np.ndarray] = []
        self._inter = self._union = 0

    def _add_landmarks(self, split, p, landmarks, scales):
        if landmarks is None:
            return
        lm = torch.as_tensor(landmarks).detach().double().cpu().numpy()
        if lm.ndim != 3 or lm.shape[0] != p.shape[0] or lm.shape[-1] != 2:
            raise ValueError(f"landmarks must be ({p.shape[0]}, L, 2), got shape {lm.shape}")
        if self.normalizer == "scales":
            if scales is None:
                raise ValueError('normalizer="scales" needs per-image scales')
            s = torch.as_tensor(scales).detach().double().cpu().numpy().reshape(-1)
            if s.shape[0] != p.shape[0]:
                raise ValueError(f"scales must have {p.shape[0]} values, got {s.shape[0]}")
            self._scales[split].append(s)
        centres, empty = _centres(p)
        self._empty_parts += empty
        self._centres[split].append(centres)
        self._landmarks[split].append(lm)

    def add_train(self, probs, landmarks, scales=None) -> None:
        p = _probs(probs)
        self._count["train"] += p.shape[0]
        self._add_landmarks("train", p, landmarks, scales)

    def add_test(
        self, probs, landmarks=None, scales=None, parts=None, fg=None, keypoints=None, visible=None
    ) -> None:
        p = _probs(probs)
        self._count["test"] += p.shape[0]
        self._add_landmarks("test", p, landmarks, scales)
        labels = p.argmax(dim=1)
        kp = keypoints if keypoints is not None else landmarks
        if kp is not None:
            pred, ids = keypoint_part_labels(labels, kp, visible)
            table = contingency_table(pred, ids, n_a=p.shape[1], n_b=torch.as_tensor(kp).shape[1])
            self._kp_table = add_tables(self._kp_table, table)
        if parts is not None:
            pred, gt = dense_part_labels(labels, parts, fg)
            n_b = int(gt.max()) + 1 if gt.size else 1
            self._part_table = add_tables(
                self._part_table, contingency_table(pred, gt, n_a=p.shape[1], n_b=n_b)
            )
            # Every pixel, background (0) included on both sides.
            pred, gt = dense_part_labels(labels, parts, torch.ones_like(labels, dtype=torch.bool))
            n_b = max(int(gt.max()) + 1 if gt.size else 1, 2)
            self._full_table = add_tables(
                self._full_table, contingency_table(pred, gt, n_a=p.shape[1], n_b=n_b)
            )
        gt_fg = (
            fg if fg is not None else (torch.as_tensor(parts) > 0 if parts is not None else None)
        )
        if gt_fg is not None:
            iou, inter, union = foreground_iou(labels, gt_fg)
            self._ious.append(iou)
            self._inter += inter
            self._union += union

    def drop_landmarks(self) -> None:
        """Forget the landmarks added so far: compute() then has no landmark_error_* keys."""
        self._centres = {"train": [], "test": []}
        self._landmarks = {"train": [], "test": []}
        self._scales = {"train": [], "test": []}

    def compute(self) -> dict:
        out = {"n_train": self._count["train"], "n_test": self._count["test"]}
        if self._centres["train"] and self._centres["test"]:
            tr_c, te_c = (np.concatenate(self._centres[s]) for s in ("train", "test"))
            tr_l, te_l = (np.concatenate(self._landmarks[s]) for s in ("train", "test"))
            norm = "iod"
            if self.normalizer == "scales":
                norm = (np.concatenate(self._scales["train"]), np.concatenate(self._scales["test"]))
            err_tr, err_te = landmark_regression_error(tr_c, tr_l, te_c, te_l, normalizer=norm)
            out["landmark_error_train"], out["landmark_error_test"] = err_tr, err_te
            out["empty_parts"] = self._empty_parts
        if self._kp_table is not None:
            out["keypoint_nmi"] = nmi_from_table(self._kp_table)
            out["keypoint_ari"] = ari_from_table(self._kp_table)
            # Keypoints that fall on a predicted part: background predictions left out.
            fg_rows = self._kp_table[1:]
            out["keypoint_fg_nmi"] = nmi_from_table(fg_rows)
            out["keypoint_fg_ari"] = ari_from_table(fg_rows)
            total = self._kp_table.sum()
            out["keypoint_on_background"] = float(self._kp_table[0].sum() / total) if total else 0.0
        if self._part_table is not None:
            out["part_nmi"] = nmi_from_table(self._part_table)
            out["part_ari"] = ari_from_table(self._part_table)
            out["part_nmi_full"] = nmi_from_table(self._full_table)
            out["part_ari_full"] = ari_from_table(self._full_table)
        if self._ious:
            out["fg_iou"] = float(np.concatenate(self._ious).mean())
            out["fg_iou_pooled"] = self._inter / self._union if self._union else 1.0
        return out


def evaluate_predictions(
    probs_train,
    landmarks_train,
    probs_test,
    landmarks_test,
    parts_test=None,
    fg_test=None,
    normalizer="iod",
    visible_test=None,
    batch_size: int = 256,
) -> dict:
    """Every number for one set of predictions; see `PartEvaluator` for the keys.

    probs_*: (N, K+1, H, W) softmax probabilities (channel 0 background); landmarks_*: (N, L, 2)
    pixel (x, y) in the probs' resolution (landmarks_train may be None to skip the regression);
    parts_test / fg_test: (M, H, W) ground-truth part ids / foreground. normalizer: "iod" or
    (train_scales, test_scales). The keypoint NMI/ARI uses the test landmarks, with
    visible_test (M, L) bool saying which are annotated.
    """
    scales_tr = scales_te = None
    if isinstance(normalizer, str):
        evaluator = PartEvaluator(normalizer)
    else:
        scales_tr, scales_te = normalizer
        evaluator = PartEvaluator("scales")

    def chunks(x, start):
        return None if x is None else x[start : start + batch_size]

    if landmarks_train is not None:
        for s in range(0, len(probs_train), batch_size):
            evaluator.add_train(
                chunks(probs_train, s), chunks(landmarks_train, s), chunks(scales_tr, s)
            )
    for s in range(0, len(probs_test), batch_size):
        evaluator.add_test(
            chunks(probs_test, s),
            landmarks=chunks(landmarks_test, s),
            scales=chunks(scales_te, s),
            parts=chunks(parts_test, s),
            fg=chunks(fg_test, s),
            visible=chunks(visible_test, s),
        )
    return evaluator.compute()


def stack_items(items: list[dict], key: str):
    """The values of `key` over dataset items, stacked; None where items lack the key."""
    if key not in items[0]:
        return None
    return torch.stack([torch.as_tensor(it[key]) for it in items])


def item_count(dataset, limit: int | None) -> int:
    """How many items of `dataset` an evaluation limited to `limit` (None: all) reads."""
    return len(dataset) if limit is None else min(limit, len(dataset))


def item_batches(dataset, batch_size: int, limit: int | None):
    """Lists of consecutive dataset items, at most `limit` items in all."""
    n = item_count(dataset, limit)
    for start in range(0, n, batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, n))]


@torch.no_grad()
def evaluate_dataset(
    predict,
    train_set,
    test_set,
    batch_size: int = 16,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    """Run `predict` over two data sets of `scops_fast.data` items and evaluate (see PartEvaluator).

    predict: callable (B, 3, H, W) images in [0, 1] -> (B, K+1, h, w) softmax probabilities;
        maps of another size than the images are bilinearly resized (align_corners=True) to them.
    train_set: items with `landmarks`, used only to fit the landmark regressor (None to skip).
    test_set: items with any of `landmarks` (+ `visible`), `parts`, `fg`.
    The regression runs only when every landmark is finite (CUB's invisible keypoints are NaN:
    its keys are then absent); the keypoint NMI/ARI use `visible` when the items have it.
    limit: evaluate at most this many items of each set.
    progress: a progress bar over the images on a terminal.
    """

    def probs_of(items):
        return {"model": model_probs(predict, items)}

    return evaluate_many(("model",), probs_of, train_set, test_set, batch_size, limit, progress)[
        "model"
    ]


def model_probs(predict, items: list[dict]) -> torch.Tensor:
    """`predict` on the items' images, as float32 on the CPU at the images' size."""
    img = stack_items(items, "img")
    p = torch.as_tensor(predict(img)).detach().float().cpu()
    if p.shape[-2:] != img.shape[-2:]:
        p = torch.nn.functional.interpolate(
            p, size=img.shape[-2:], mode="bilinear", align_corners=True
        )
    return p


def evaluate_many(
    names,
    probs_of,
    train_set,
    test_set,
    batch_size: int,
    limit: int | None,
    progress: bool = False,
) -> dict[str, dict]:
    """`PartEvaluator` results of several predictors scored on the same items, by name:
    `probs_of(items)` gives {name: (B, K+1, H, W) probabilities} for each of `names`. As
    `evaluate_dataset`."""
    bar = None
    if progress:
        from scops_fast.terminal import progress_bar

        total = sum(item_count(d, limit) for d in (train_set, test_set) if d is not None)
        bar = progress_bar(total, unit="image", desc="evaluating")
    with contextlib.closing(bar) if bar is not None else contextlib.nullcontext():
        evaluators = {name: PartEvaluator() for name in names}
        regress = train_set is not None
        if regress:
            for items in item_batches(train_set, batch_size, limit):
                lm = stack_items(items, "landmarks")
                if lm is None or not torch.isfinite(lm).all():
                    regress = False
                    if bar is not None:  # the rest of the train split is not scored
                        bar.total -= item_count(train_set, limit) - bar.n
                        bar.refresh()
                    break
                for name, probs in probs_of(items).items():
                    evaluators[name].add_train(probs, lm)
                if bar is not None:
                    bar.update(len(items))
        for items in item_batches(test_set, batch_size, limit):
            lm = stack_items(items, "landmarks")
            regress = regress and lm is not None and bool(torch.isfinite(lm).all())
            truth = {
                "parts": stack_items(items, "parts"),
                "fg": stack_items(items, "fg"),
                "keypoints": lm,
                "visible": stack_items(items, "visible"),
            }
            for name, probs in probs_of(items).items():
                evaluators[name].add_test(probs, landmarks=lm if regress else None, **truth)
            if bar is not None:
                bar.update(len(items))
    results = {}
    for name, evaluator in evaluators.items():
        if not regress:  # some landmarks were missing: a partial regression would mislead
            evaluator.drop_landmarks()
        results[name] = evaluator.compute()
    return results
