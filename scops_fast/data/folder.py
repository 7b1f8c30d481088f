"""A plain folder of images (searched recursively), with an optional folder of saliency maps."""

from __future__ import annotations

import pathlib

import torch

from .imagefiles import (
    IMAGE_EXTENSIONS,
    CropResize,
    SkippingDataset,
    image_tensor,
    load_rgb,
    load_saliency,
    parse_size,
)

#: Where `saliency_dir="auto"` caches its maps, under the root (`scops_fast.data.saliency`
#: imports OpenCV, so only the name lives here).
CACHE_DIR_NAME = ".scops_saliency"

__all__ = ["ImageFolder"]


class ImageFolder(SkippingDataset):
    """Every image file under `root` (recursively, sorted by relative path), resized to `size`.

    Args:
        root: folder of images; files whose extension is not an image extension are ignored.
        size: output size, int or (H, W); images are resized to it (aspect ratio not kept).
        saliency_dir: folder mirroring root's relative paths with grey maps of the same stem
            (.png preferred, any image extension accepted); None gives a saliency of ones;
            "auto" estimates the maps (`scops_fast.data.saliency`) and caches them in
            `root/.scops_saliency/` (a folder never listed as images), computing only those
            missing or older than their image. A missing map makes its item unreadable
            (skipped and counted).
        extensions: file extensions to include (lower case, with the dot).

    Item: img (3, H, W) float32 in [0, 1]; saliency (H, W) float32; name str (relative path);
    index int.
    """

    def __init__(self, root, size=128, saliency_dir=None, extensions=IMAGE_EXTENSIONS):
        super().__init__()
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.size = parse_size(size)
        exts = tuple(e.lower() for e in extensions)
        self.files = sorted(
            rel.as_posix()
            for rel in (p.relative_to(self.root) for p in self.root.rglob("*"))
            if rel.suffix.lower() in exts
            and CACHE_DIR_NAME not in rel.parts
            and (self.root / rel).is_file()
        )
        #: The counts of the maps `saliency_dir="auto"` wrote and reused (None otherwise).
        self.saliency_counts = None
        if saliency_dir == "auto":
            from .saliency import cached_saliency_dir

            saliency_dir, self.saliency_counts = cached_saliency_dir(self.root, self.files)
        self.saliency_dir = pathlib.Path(saliency_dir) if saliency_dir is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def _describe(self, index: int) -> str:
        return str(self.root / self.files[index])

    def _load(self, index: int) -> dict:
        rel = self.files[index]
        im = load_rgb(self.root / rel)
        tf = CropResize(None, im.size, self.size)
        if self.saliency_dir is not None:
            stem = str(pathlib.PurePosixPath(rel).with_suffix(""))
            sal = load_saliency(self.saliency_dir, stem, im.size, tf)
        else:
            sal = torch.ones(self.size)
        return {"img": image_tensor(tf.image(im)), "saliency": sal, "name": rel}
