"""CUB-200-2011 birds with their 15 part keypoints and bounding boxes.

Expected layout under `root` (the original release):

    images.txt                 "image_id relative/path.jpg"
    bounding_boxes.txt         "image_id x y width height"
    parts/part_locs.txt        "image_id part_id x y visible", 15 parts per image
    train_test_split.txt       "image_id is_training_image"
    images/<relative/path.jpg>
    <saliency_dir>/<relative/path>.png   optional grey maps (e.g. the CUB segmentations)

With crop="bbox" (default) each image is cropped to a square around the bird's box, the box's
longer side times (1 + 2 * margin) (margin 0.1), outside black; crop=None resizes the whole image.
Keypoints that are not visible are NaN in `landmarks` and False in `visible`.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from .imagefiles import (
    CropResize,
    SkippingDataset,
    image_tensor,
    load_rgb,
    load_saliency,
    parse_size,
    square_box,
)

__all__ = ["CUB", "CUB_PART_NAMES"]

CUB_PART_NAMES = (
    "back",
    "beak",
    "belly",
    "breast",
    "crown",
    "forehead",
    "left_eye",
    "left_leg",
    "left_wing",
    "nape",
    "right_eye",
    "right_leg",
    "right_wing",
    "tail",
    "throat",
)
SPLITS = ("train", "test", "all")


def _rows(path) -> list[list[str]]:
    return [line.split() for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


class CUB(SkippingDataset):
    """CUB-200-2011 (see the module docstring).

    Args:
        root: dataset folder.
        split: "train", "test" (train_test_split.txt) or "all".
        size: output size, int or (H, W).
        crop: "bbox" (square around the bird's box) or None (whole image).
        margin: added on each side of the bbox crop, as a fraction of the box's longer side.
        saliency_dir: folder of grey maps at the images' relative paths with a .png extension;
            None gives a saliency of ones. A missing map makes its item unreadable (skipped).
        classes: optional iterable of class numbers (the "001" of "001.Black_footed_Albatross")
            to keep, e.g. the SCOPS subsets.

    Item: img (3, H, W) float32 in [0, 1]; saliency (H, W) float32; landmarks (15, 2) float32
    pixel (x, y), NaN where not visible; visible (15,) bool; bbox (4,) float32 (x, y, w, h) in
    output pixels; name str (relative path); index int.
    """

    landmark_names = CUB_PART_NAMES

    def __init__(
        self,
        root,
        split="train",
        size=128,
        crop="bbox",
        margin=0.1,
        saliency_dir=None,
        classes=None,
    ):
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if crop not in ("bbox", None):
            raise ValueError(f'crop must be "bbox" or None, got {crop!r}')
        self.root = pathlib.Path(root)
        self.size, self.crop, self.margin = parse_size(size), crop, float(margin)
        self.saliency_dir = pathlib.Path(saliency_dir) if saliency_dir is not None else None
        paths = {int(r[0]): r[1] for r in _rows(self.root / "images.txt")}
        boxes = {
            int(r[0]): np.array([float(v) for v in r[1:5]])
            for r in _rows(self.root / "bounding_boxes.txt")
        }
        is_train = {int(r[0]): r[1] == "1" for r in _rows(self.root / "train_test_split.txt")}
        parts: dict[int, np.ndarray] = {}
        for r in _rows(self.root / "parts" / "part_locs.txt"):
            image_id, part_id = int(r[0]), int(r[1])
            if not 1 <= part_id <= len(CUB_PART_NAMES):
                raise ValueError(f"part_locs.txt: part id {part_id} outside 1..15")
            locs = parts.setdefault(image_id, np.full((len(CUB_PART_NAMES), 3), np.nan))
            locs[part_id - 1] = (float(r[2]), float(r[3]), float(r[4]))
        wanted = None if classes is None else {f"{int(c):03d}" for c in classes}
        ids = []
        for image_id in sorted(paths):
            if split != "all" and is_train.get(image_id) != (split == "train"):
                continue
            if wanted is not None and paths[image_id].split(".", 1)[0] not in wanted:
                continue
            if image_id not in boxes:
                raise ValueError(f"bounding_boxes.txt has no box for image {image_id}")
            ids.append(image_id)
        self.ids, self.paths, self.boxes, self.parts = ids, paths, boxes, parts

    def __len__(self) -> int:
        return len(self.ids)

    def _describe(self, index: int) -> str:
        return str(self.root / "images" / self.paths[self.ids[index]])

    def _load(self, index: int) -> dict:
        image_id = self.ids[index]
        rel = self.paths[image_id]
        im = load_rgb(self.root / "images" / rel)
        box = self.boxes[image_id]
        crop_box = square_box(*box, self.margin) if self.crop == "bbox" else None
        tf = CropResize(crop_box, im.size, self.size)
        if self.saliency_dir is not None:
            sal = load_saliency(
                self.saliency_dir, str(pathlib.PurePath(rel).with_suffix("")), im.size, tf
            )
        else:
            sal = torch.ones(self.size)
        locs = self.parts.get(image_id, np.full((len(CUB_PART_NAMES), 3), np.nan))
        visible = locs[:, 2] > 0  # NaN (no row) compares False
        points = tf.points(locs[:, :2])
        points[~visible] = np.nan
        return {
            "img": image_tensor(tf.image(im)),
            "saliency": sal,
            "landmarks": torch.from_numpy(points).float(),
            "visible": torch.from_numpy(visible),
            "bbox": torch.from_numpy(tf.xywh(box)).float(),
            "name": rel,
        }
