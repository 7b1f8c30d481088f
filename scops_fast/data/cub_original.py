"""CUB-200-2011 as the original SCOPS reads it for its CUB evaluation (its dataset/cub.py,
from the CMR code base): annotations from CMR's cache of MATLAB files, each bird cropped to
a jittered, padded square around its box and scaled so the square's side is `size`.

Expected layout:

    <root>/images/<rel_path>                       the CUB images (rel_path as in the cache)
    <cache_dir>/data/<split>_cub_cleaned.mat       `images`: struct array with rel_path,
                                                   bbox (x1, y1, x2, y2; 1-based), parts (3 x 15:
                                                   x, y, visible; 1-based), mask (H x W)

What each item goes through, as in the original:
1. the box and the visible keypoints move to 0-based pixels;
2. the box grows by `padding` (5%) of its width / height on each side, each side also moved
   by a uniform jitter of up to `bbox_jitter` (5%) of the width / height. The original jitters
   its test images too (its split flag is a module constant left at "train"): `bbox_jitter=0`
   turns that off;
3. the box becomes a square around its centre (integer pixels), the image is cropped to it with
   white outside the image (the mask with 0), keypoints follow;
4. the crop is scaled so its side is `size` (OpenCV's bilinear resize of the float image, the
   side rounded), keypoints scaled by the same factor.

Files are read as the original reads them (scipy's imread, i.e. PIL): pixels as stored, no
EXIF orientation or colour profile applied, unlike this package's other readers
(`imagefiles.displayed_rgb`). On a file with neither an orientation tag nor a profile nor alpha
the two agree.

Item: img (3, size, size) float32 in [0, 1] (not quantised to 8 bits, as the original);
mask (size, size) float32; landmarks (15, 2) float32 pixel (x, y), NaN where not visible;
visible (15,) bool; bbox (4,) float32 the bird's box (x, y, w, h) in output pixels;
name str (rel_path); index int. Needs scipy (the .mat files) and opencv-python-headless.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from .imagefiles import SkippingDataset, load_rgb_as_stored, opencv

__all__ = ["CUBOriginal", "perturb_box", "square_box_original", "SCOPS_CUB_SUBSETS"]

#: The single-class subsets on which SCOPS's CUB landmark errors are reported (classes 001,
#: 002, 003: Black-footed, Laysan and Sooty Albatross).
SCOPS_CUB_SUBSETS = {1: (1,), 2: (2,), 3: (3,)}


def perturb_box(box, padding: float, jitter: float, u) -> list[float]:
    """Pads each side of (x0, y0, x1, y1) by `padding` of the box's width / height and moves
    it by (1 - 2u) * `jitter` of it, for four uniforms u in [0, 1), in the order x0, y0, x1,
    y1 (the original's arithmetic; widths count both end pixels)."""
    x0, y0, x1, y1 = (float(c) for c in box)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    return [
        x0 - (padding * w + (1 - 2 * u[0]) * jitter * w),
        y0 - (padding * h + (1 - 2 * u[1]) * jitter * h),
        x1 + (padding * w + (1 - 2 * u[2]) * jitter * w),
        y1 + (padding * h + (1 - 2 * u[3]) * jitter * h),
    ]


def square_box_original(box) -> list[float]:
    """The square around a box, as the original makes it: corners rounded (Python's
    round-half-to-even), the shorter side grown by half the difference on each side."""
    x0, y0, x1, y1 = (int(round(c)) for c in box)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    side = float(max(w, h))
    x0 -= int(round((side - w) / 2.0))
    y0 -= int(round((side - h) / 2.0))
    return [x0, y0, x0 + side - 1, y0 + side - 1]


def _crop(img: np.ndarray, box, background: float) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(c)) for c in box)
    h, w = img.shape[:2]
    out = np.full((y1 - y0 + 1, x1 - x0 + 1, *img.shape[2:]), background, dtype=np.float64)
    sx0, sx1, sy0, sy1 = max(0, x0), min(w, x1 + 1), max(0, y0), min(h, y1 + 1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def read_cub_cache(path) -> list[dict]:
    """The `images` records of a CMR `<split>_cub_cleaned.mat` as dicts."""
    import scipy.io

    records = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)["images"]
    records = np.atleast_1d(records)
    out = []
    for r in records:
        b = r.bbox
        out.append(
            {
                "rel_path": str(r.rel_path),
                "bbox": np.array([b.x1, b.y1, b.x2, b.y2], dtype=np.float64),
                "parts": np.asarray(r.parts, dtype=np.float64).reshape(3, -1).T,
                "mask": np.asarray(r.mask),
            }
        )
    return out


class CUBOriginal(SkippingDataset):
    """CUB as the original's CUB evaluation reads it (see the module docstring).

    Args:
        root: the CUB_200_2011 folder (with images/).
        cache_dir: CMR's cub cache folder (with data/<split>_cub_cleaned.mat).
        split: "train", "val" or "test" (the cache file's prefix).
        size: the output side.
        padding, bbox_jitter: box padding and jitter fractions (the original's 0.05, 0.05).
        classes: optional class numbers to keep (the "001" of "001.Black_footed_Albatross").
        seed: the jitter's draws come from a generator seeded with (seed, index), so an item
            is the same every time it is read.
    """

    def __init__(
        self,
        root,
        cache_dir,
        split="test",
        size=256,
        *,
        padding=0.05,
        bbox_jitter=0.05,
        classes=None,
        seed=0,
    ):
        super().__init__()
        self.root, self.cache_dir = pathlib.Path(root), pathlib.Path(cache_dir)
        self.size, self.padding, self.bbox_jitter = int(size), float(padding), float(bbox_jitter)
        self.seed = int(seed)
        opencv()
        records = read_cub_cache(self.cache_dir / "data" / f"{split}_cub_cleaned.mat")
        if classes is not None:
            wanted = {f"{int(c):03d}" for c in classes}
            records = [r for r in records if r["rel_path"].split(".", 1)[0] in wanted]
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def _describe(self, index: int) -> str:
        return str(self.root / "images" / self.records[index]["rel_path"])

    def jitter_draws(self, index: int) -> np.ndarray:
        """The four uniforms of item `index`'s box jitter."""
        return np.random.default_rng([self.seed, index]).random(4)

    def _load(self, index: int) -> dict:
        cv2 = opencv()
        r = self.records[index]
        img = (
            np.asarray(load_rgb_as_stored(self.root / "images" / r["rel_path"]), dtype=np.float64)
            / 255.0
        )
        box = r["bbox"] - 1
        kp = r["parts"].copy()
        visible = kp[:, 2] > 0
        kp[visible, :2] -= 1
        box = perturb_box(box, self.padding, self.bbox_jitter, self.jitter_draws(index))
        square = square_box_original(box)
        img = _crop(img, square, 1.0)
        mask = _crop(np.asarray(r["mask"], dtype=np.float64)[..., None], square, 0.0)[..., 0]
        kp[visible, 0] -= square[0]
        kp[visible, 1] -= square[1]
        scale = self.size / float(max(img.shape[0], img.shape[1]))
        new_h, new_w = (int(v) for v in np.round(np.array(img.shape[:2]) * scale))
        img = cv2.resize(img, (new_w, new_h))
        mask = cv2.resize(mask, (new_w, new_h))
        kp[visible, :2] *= scale
        points = kp[:, :2].copy()
        points[~visible] = np.nan
        x0, y0, x1, y1 = r["bbox"] - 1
        bird = [(x0 - square[0]) * scale, (y0 - square[1]) * scale]
        bird += [(x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale]
        return {
            "img": torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(np.asarray(mask, np.float32)),
            "landmarks": torch.from_numpy(points.astype(np.float32)),
            "visible": torch.from_numpy(visible),
            "bbox": torch.tensor(bird, dtype=torch.float32),
            "name": r["rel_path"],
        }
