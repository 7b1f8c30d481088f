"""CelebA "in the wild" (unaligned images) with the MAFL splits, as SCOPS evaluates faces.

Expected layout under `root` (the original CelebA release plus MAFL lists):

    img_celeba/000001.jpg ...          full, unaligned images
    list_landmarks_celeba.txt          count; header; "name x1 y1 ... x5 y5" (the UNALIGNED file,
                                       not list_landmarks_align_celeba.txt, which is for img_align)
    list_bbox_celeba.txt               count; header "image_id x_1 y_1 width height"; rows
    MAFL/training.txt, MAFL/testing.txt   one image name per line
    <saliency_dir>/000001.png ...      optional grey saliency maps, same stem as the image

Each image is cropped to a square around its face box: side = the box's longer side times
(1 + 2 * margin), centred on the box (margin 0.1 by default, so 10% of the longer side is added
on every side); parts of the square outside the image are black. The crop is resized to `size`.
Landmarks (lefteye, righteye, nose, leftmouth, rightmouth) and the box are returned in pixels of
the resized crop, so landmarks[0], landmarks[1] are the eyes for the inter-ocular normaliser.
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

__all__ = ["CelebAWild", "read_celeba_table", "CELEBA_LANDMARK_NAMES"]

CELEBA_LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
SPLITS = ("train", "test", "all", "all_but_test")


def read_celeba_table(path, columns: int) -> dict[str, np.ndarray]:
    """CelebA annotation file (count line, header line, rows "name v1 ... vC") -> {name: values}."""
    lines = pathlib.Path(path).read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header line")
    table = {}
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns + 1:
            raise ValueError(f"{path}:{lineno}: expected {columns + 1} fields, got {len(fields)}")
        table[fields[0]] = np.array([float(v) for v in fields[1:]])
    return table


def _read_list(path) -> list[str]:
    return [line.split()[0] for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


class CelebAWild(SkippingDataset):
    """CelebA in the wild, cropped around the face box (see the module docstring).

    Args:
        root: dataset folder.
        split: "train" (MAFL/training.txt), "test" (MAFL/testing.txt), "all" (every image with
            landmarks), or "all_but_test" (every image with landmarks except the MAFL test
            images: the set to train the part model on without seeing the test faces).
        size: output size, int or (H, W).
        saliency_dir: folder of grey PNGs with the images' stems (resized to the image first if
            their size differs); None gives a saliency of ones.
            A missing or unreadable saliency map makes its item unreadable (skipped and counted).
        margin: added on each side of the square crop, as a fraction of the box's longer side.

    Item: img (3, H, W) float32 in [0, 1]; saliency (H, W) float32; landmarks (5, 2) float32
    pixel (x, y); bbox (4,) float32 face box (x, y, w, h) in output pixels; name str; index int.
    """

    landmark_names = CELEBA_LANDMARK_NAMES

    def __init__(self, root, split="train", size=128, saliency_dir=None, margin=0.1):
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = pathlib.Path(root)
        self.size = parse_size(size)
        self.margin = float(margin)
        self.saliency_dir = pathlib.Path(saliency_dir) if saliency_dir is not None else None
        self.landmarks = read_celeba_table(self.root / "list_landmarks_celeba.txt", 10)
        self.boxes = read_celeba_table(self.root / "list_bbox_celeba.txt", 4)
        if split in ("train", "test"):
            names = _read_list(
                self.root / "MAFL" / f"{'training' if split == 'train' else 'testing'}.txt"
            )
        else:
            names = sorted(self.landmarks)
            if split == "all_but_test":
                test = set(_read_list(self.root / "MAFL" / "testing.txt"))
                names = [n for n in names if n not in test]
        missing = [n for n in names if n not in self.landmarks or n not in self.boxes]
        if missing:
            raise ValueError(
                f"{len(missing)} images of split {split!r} lack landmarks or a box: {missing[:3]}"
            )
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def _describe(self, index: int) -> str:
        return str(self.root / "img_celeba" / self.names[index])

    def _load(self, index: int) -> dict:
        name = self.names[index]
        im = load_rgb(self.root / "img_celeba" / name)
        x, y, w, h = self.boxes[name]
        tf = CropResize(square_box(x, y, w, h, self.margin), im.size, self.size)
        if self.saliency_dir is not None:
            sal = load_saliency(self.saliency_dir, pathlib.PurePath(name).stem, im.size, tf)
        else:
            sal = torch.ones(self.size)
        return {
            "img": image_tensor(tf.image(im)),
            "saliency": sal,
            "landmarks": torch.from_numpy(tf.points(self.landmarks[name].reshape(5, 2))).float(),
            "bbox": torch.from_numpy(tf.xywh((x, y, w, h))).float(),
            "name": name,
        }
