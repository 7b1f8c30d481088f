"""Datasets, all map-style and returning dicts of tensors.

- `SyntheticParts`: a procedural creature category with exact part labels, for the demo and tests.
- `CelebAWild`, `CUB`, `ImageFolder`: real data on disk in the original layouts. Each item has
  `img` (3, H, W) in [0, 1] at the requested size, `saliency` (H, W) (ones when there is none),
  `landmarks` (L, 2) pixel (x, y) in the resized image where annotated, `bbox` (x, y, w, h) where
  known, `name` and `index`. Unreadable files are skipped with a warning and counted in `skipped`.
- `CUBOriginal`: CUB as the original SCOPS evaluation reads it (CMR's annotation cache, jittered
  square crops); `CelebAWild(crop=None, min_face_area=0.3, reader="opencv")` is CelebA as the
  original reads it.
"""

from .celeba import CELEBA_LANDMARK_NAMES, CelebAWild
from .cub import CUB, CUB_PART_NAMES
from .cub_original import SCOPS_CUB_SUBSETS, CUBOriginal
from .folder import ImageFolder
from .imagefiles import SkippingDataset
from .synthetic import LANDMARK_NAMES, PART_NAMES, SyntheticParts

__all__ = [
    "CELEBA_LANDMARK_NAMES",
    "CUB",
    "CUBOriginal",
    "CUB_PART_NAMES",
    "CelebAWild",
    "ImageFolder",
    "LANDMARK_NAMES",
    "PART_NAMES",
    "SCOPS_CUB_SUBSETS",
    "SkippingDataset",
    "SyntheticParts",
]
