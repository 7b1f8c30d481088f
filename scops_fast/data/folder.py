"""A plain folder of images (searched recursively), with an optional folder of saliency maps."""

from __future__ import annotations

import pathlib
import sys

import torch

from .imagefiles import (
    IMAGE_EXTENSIONS,
    UNREADABLE,
    CropResize,
    SkippingDataset,
    check_distinct_stems,
    image_tensor,
    load_rgb,
    load_saliency,
    parse_size,
)

#: Where `saliency_dir="auto"` caches its maps, under the root (`scops_fast.data.saliency`
#: imports OpenCV, so only the name lives here).
CACHE_DIR_NAME = ".scops_saliency"

__all__ = ["ImageFolder", "MISSING_SALIENCY", "RESIZE_MODES", "resize_box"]

#: What ImageFolder does with images a given saliency folder has no map for.
MISSING_SALIENCY = ("refuse", "skip")


#: How ImageFolder brings an image to the training shape (see its `resize` argument).
RESIZE_MODES = ("squash", "letterbox", "crop")


def resize_box(src_size, out_size, mode: str) -> tuple[int, int, int, int] | None:
    """The source box (x0, y0, x1, y1) that CropResize scales to out_size (H, W): None for
    "squash"; for "crop" the central box of the output's aspect inside the image; for
    "letterbox" the box of that aspect around the image, reaching outside it (black)."""
    if mode == "squash":
        return None
    w, h = src_size
    out_h, out_w = out_size
    aspect = out_w / out_h
    if (w / h > aspect) == (mode == "crop"):  # keep the height, choose the width
        bw, bh = max(1, round(h * aspect)), h
    else:  # keep the width, choose the height
        bw, bh = w, max(1, round(w / aspect))
    x0, y0 = (w - bw) // 2, (h - bh) // 2
    return (x0, y0, x0 + bw, y0 + bh)


def _stem(rel: str) -> str:
    return pathlib.PurePosixPath(rel).with_suffix("").as_posix()


class ImageFolder(SkippingDataset):
    """Every image file under `root` (recursively, sorted by relative path), resized to `size`.

    Args:
        root: folder of images; files whose extension is not an image extension are ignored.
        size: output size, int or (H, W); images are resized to it (aspect ratio not kept).
        saliency_dir: folder mirroring root's relative paths with grey maps of the same stem
            (.png preferred, any image extension accepted); None gives a saliency of ones;
            "auto" estimates the maps (`scops_fast.data.saliency`) and caches them in
            `root/.scops_saliency/` (a folder never listed as images), computing only those
            missing or older than their image. A given folder is checked at once: one that
            holds no map for any image is refused, and so is one that covers only some of
            them, unless missing_saliency="skip".
        missing_saliency: "refuse" (the default: a folder of maps that misses some images is
            an error naming the count) or "skip" (the images without a map are left out, and
            the count is printed on stderr).
        resize: how an image whose shape differs from `size` is brought to it: "squash" (the
            default: the whole image, stretched), "letterbox" (the whole image, undistorted,
            centred with black bars; the bars' saliency is 0) or "crop" (undistorted, the
            central region of the output's shape, the rest cut off).
        extensions: file extensions to include (lower case, with the dot).

    Item: img (3, H, W) float32 in [0, 1]; saliency (H, W) float32; name str (relative path);
    index int.
    """

    def __init__(
        self,
        root,
        size=128,
        saliency_dir=None,
        extensions=IMAGE_EXTENSIONS,
        missing_saliency: str = "refuse",
        resize: str = "squash",
    ):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.resize = resize
        if missing_saliency not in MISSING_SALIENCY:
            raise ValueError(
                f"missing_saliency: expected one of {', '.join(MISSING_SALIENCY)}, "
                f"got {missing_saliency!r}"
            )
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
        #: Images left out for want of a saliency map (missing_saliency="skip").
        self.without_saliency: list[str] = []
        if self.saliency_dir is not None and self.saliency_counts is None and self.files:
            self._check_saliency_coverage(missing_saliency)

    def _check_saliency_coverage(self, missing_saliency: str) -> None:
        check_distinct_stems(self.files, "the saliency map ")
        folder = self.saliency_dir
        if not folder.is_dir():
            raise FileNotFoundError(f"saliency folder {folder} does not exist")
        have = {
            rel.with_suffix("").as_posix()
            for rel in (p.relative_to(folder) for p in folder.rglob("*"))
            if rel.suffix.lower() in IMAGE_EXTENSIONS
        }
        missing = [rel for rel in self.files if _stem(rel) not in have]
        if not missing:
            return
        n, m = len(self.files), len(missing)
        if m == n:
            raise ValueError(
                f"saliency folder {folder} holds no map for any of the {n} images under "
                f"{self.root} (a map is named like its image: {_stem(missing[0])}.png for "
                f"{missing[0]})"
            )
        if missing_saliency == "refuse":
            # An image that cannot be read has no map (scops-saliency skips it too) and would
            # be skipped in training anyway: only a readable one without a map is refused.
            readable = next((rel for rel in missing if _readable(self.root / rel)), None)
            if readable is None:
                return
            missing.remove(readable)
            missing.insert(0, readable)
            raise ValueError(
                f"saliency folder {folder} holds maps for {n - m} of the {n} images under "
                f"{self.root}; {m} have none (first: {missing[0]}); add them, or leave those "
                "images out with missing_saliency='skip' (scops-train: --set "
                "data.args.missing_saliency=skip)"
            )
        left_out = set(missing)
        self.files = [rel for rel in self.files if rel not in left_out]
        self.without_saliency = missing
        print(
            f"ImageFolder: left out {m} of {n} images that have no saliency map in {folder} "
            f"(first: {missing[0]})",
            file=sys.stderr,
            flush=True,
        )

    def __len__(self) -> int:
        return len(self.files)

    def _describe(self, index: int) -> str:
        return str(self.root / self.files[index])

    def _load(self, index: int) -> dict:
        rel = self.files[index]
        im = load_rgb(self.root / rel)
        tf = CropResize(resize_box(im.size, self.size, self.resize), im.size, self.size)
        if self.saliency_dir is not None:
            sal = load_saliency(self.saliency_dir, _stem(rel), im.size, tf)
        else:
            sal = torch.ones(self.size)
        return {"img": image_tensor(tf.image(im)), "saliency": sal, "name": rel}


def _readable(path: pathlib.Path) -> bool:
    try:
        load_rgb(path)
    except UNREADABLE:
        return False
    return True
