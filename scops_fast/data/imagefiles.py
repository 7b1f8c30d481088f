"""Shared pieces of the on-disk loaders: images read as viewers display them, cropping and
resizing with point transforms, and a Dataset base class that skips unreadable items instead of
failing an epoch.

Pixel convention: points are (x, y) with x the column index (a pixel's centre is at its integer
index), in the source image on input and in the resized output on output.
"""

from __future__ import annotations

import io
import os
import pathlib
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "SkippingDataset",
    "CropResize",
    "load_rgb",
    "load_rgb_as_stored",
    "displayed_rgb",
    "upright",
    "load_grey",
    "load_saliency",
    "opencv",
    "square_box",
    "parse_size",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# What a damaged or missing image file can raise while PIL opens and decodes it.
UNREADABLE = (
    OSError,  # missing file, unidentified image, truncated data
    ValueError,
    SyntaxError,  # PIL's PNG chunk checks
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def parse_size(size) -> tuple[int, int]:
    """int or (H, W) -> (H, W)."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def opencv():
    """The cv2 module, for the readers that reproduce the original's OpenCV arithmetic."""
    try:
        import cv2
    except ImportError:
        raise ImportError(
            'reader="opencv" (the original\'s exact image reading and resizing) needs OpenCV: '
            "pip install opencv-contrib-python-headless"
        ) from None
    return cv2


#: Transparent pixels are shown on white, as a web page or document shows a cut-out.
ALPHA_BACKGROUND = (255, 255, 255)

# PIL modes whose samples are wider than 8 bits, read as 16-bit ("I" is how PIL opens 16-bit
# PNG and TIFF greys) or as floats in [0, 1] ("F").
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def load_rgb(path) -> Image.Image:
    """The image as a photo viewer displays it, as 8-bit RGB (see `displayed_rgb`)."""
    with Image.open(path) as im:
        im.load()  # the full decode, so damage surfaces here, inside the reader's error handling
        return displayed_rgb(im)


def load_rgb_as_stored(path) -> Image.Image:
    """The stored pixels converted by PIL alone: no EXIF orientation, no colour profile, alpha
    dropped. How the original SCOPS code's CUB reader (scipy's imread) sees a file."""
    with Image.open(path) as im:
        return im.convert("RGB")


def load_grey(path) -> Image.Image:
    """A grey map (saliency) as displayed: EXIF orientation applied, wide samples scaled."""
    with Image.open(path) as im:
        im.load()
        return _eight_bit(upright(im)).convert("L")


def upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (phones store most photos sideways
    and tag them). An unreadable EXIF block leaves the image as stored, not unreadable."""
    try:
        if im.getexif().get(ExifTags.Base.Orientation, 1) in (1, None):
            return im  # the common case, without exif_transpose's copy
        return ImageOps.exif_transpose(im)
    except (*UNREADABLE, KeyError, TypeError, AttributeError):
        return im


def displayed_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows `im`:
    - turned upright by its EXIF orientation;
    - 16-bit samples scaled to 8 bits (v * 255 / 65535, rounded), not clipped at 255; float
      samples taken as [0, 1];
    - an embedded ICC colour profile (CMYK, wide-gamut RGB such as Display P3) converted to sRGB
      with LittleCMS; without one, CMYK goes through PIL's conversion;
    - palette images through their palette;
    - alpha composited on `ALPHA_BACKGROUND` (white), palette and single-colour transparency
      included."""
    im = _eight_bit(upright(im))
    im = _to_srgb(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return im.convert("RGB")


def _eight_bit(im: Image.Image) -> Image.Image:
    """Greys wider than 8 bits scaled to 8 bits ("L"); other modes unchanged (PIL already reads
    16-bit RGB(A) files as 8-bit RGB(A) by their high bytes, which is a scaling too)."""
    if im.mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    if im.mode == "F":
        wide = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(wide * 255.0), 0, 255).astype(np.uint8))
    return im


def _to_srgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return im
    from PIL import ImageCms

    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(
            im, source, ImageCms.createProfile("sRGB"), outputMode=out_mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im  # a profile LittleCMS cannot use: the stored values, as most viewers do then
    converted.info.pop("icc_profile", None)
    return converted


def save_image_atomic(image: Image.Image, path: pathlib.Path, fmt: str, **kwargs) -> None:
    """`image` saved whole or not at all: written under a temporary name of this process
    and renamed, so an interruption, or another process writing the same file, never
    leaves a truncated image that a later run would take for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        image.save(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def square_box(x: float, y: float, w: float, h: float, margin: float) -> tuple[int, int, int, int]:
    """Integer square (x0, y0, x1, y1) centred on the box, side = longer side * (1 + 2 margin)."""
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    s = max(1, int(round(side)))
    return x0, y0, x0 + s, y0 + s


class CropResize:
    """Crop a box (may reach outside the image: the outside is black) and resize to (H, W).

    Also maps points and boxes from source pixels to output pixels, consistent with PIL's
    resampling (pixel centres of the crop land on pixel centres of the output).
    """

    def __init__(self, box: tuple[int, int, int, int] | None, src_size, out_size):
        w_src, h_src = src_size
        self.box = box if box is not None else (0, 0, w_src, h_src)
        self.out_h, self.out_w = out_size
        x0, y0, x1, y1 = self.box
        self.sx, self.sy = self.out_w / (x1 - x0), self.out_h / (y1 - y0)

    def image(self, im: Image.Image, resample=Image.BILINEAR) -> Image.Image:
        if self.box != (0, 0, im.width, im.height):
            im = im.crop(self.box)
        return im.resize((self.out_w, self.out_h), resample)

    def points(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] + 0.5 - self.box[0]) * self.sx - 0.5
        out[..., 1] = (xy[..., 1] + 0.5 - self.box[1]) * self.sy - 0.5
        return out

    def xywh(self, box) -> np.ndarray:
        """(x, y, w, h) box in source pixels -> output pixels (edges, not centres, are mapped)."""
        x, y, w, h = (float(v) for v in box)
        return np.array(
            [(x - self.box[0]) * self.sx, (y - self.box[1]) * self.sy, w * self.sx, h * self.sy]
        )


def image_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def grey_tensor(im: Image.Image) -> torch.Tensor:
    """PIL L -> (H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).float() / 255.0


def find_with_stem(folder: pathlib.Path, rel_stem: str) -> pathlib.Path | None:
    """The file folder/<rel_stem><ext> (rel_stem has no extension), preferring .png, else None."""
    for ext in (".png", *IMAGE_EXTENSIONS):
        p = folder / f"{rel_stem}{ext}"
        if p.is_file():
            return p
    return None


def load_saliency(folder: pathlib.Path, rel_stem: str, src_size, tf: CropResize) -> torch.Tensor:
    """The grey map folder/<rel_stem>.png (or another image extension), brought to the source
    image's size if it differs, then cropped and resized like the image: (H, W) in [0, 1]."""
    path = find_with_stem(folder, rel_stem)
    if path is None:
        raise FileNotFoundError(f"no saliency map {folder / rel_stem}.png")
    sal = load_grey(path)
    if sal.size != tuple(src_size):
        sal = sal.resize(tuple(src_size), Image.BILINEAR)
    return grey_tensor(tf.image(sal))


class SkippingDataset(Dataset):
    """Base class: subclasses implement `__len__`, `_load(index) -> dict` and `_describe(index)`.

    An item whose files cannot be read is skipped: one line on stderr names it (written
    directly, not as a Python warning, so `-W ignore` and PYTHONWARNINGS cannot hide it; set
    `report_skips = False` to silence it), `skipped` counts the distinct unreadable items found
    so far, `bad_indices` holds them, and the next readable index (cyclically) is returned
    instead, with its own index under "index". Known-bad items are passed over silently
    afterwards. Only if no item at all can be read does `__getitem__` raise.

    With DataLoader worker processes each worker counts in its own copy of the dataset; read
    `skipped` from a loader with num_workers=0, or collect `index` from the batches.
    """

    #: Whether each newly found unreadable item is named on stderr.
    report_skips = True

    def __init__(self):
        self.skipped = 0
        self.bad_indices: set[int] = set()

    def _load(self, index: int) -> dict:
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        return f"item {index}"

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self.bad_indices:
                continue
            try:
                item = self._load(j)
            except UNREADABLE as err:
                self.bad_indices.add(j)
                self.skipped = len(self.bad_indices)
                if self.report_skips:
                    print(
                        f"{type(self).__name__}: skipping unreadable {self._describe(j)}: {err}",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            item["index"] = j
            return item
        raise RuntimeError(f"{type(self).__name__}: none of the {n} items could be read")


def is_inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    """Whether path is folder or lies under it (links resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_distinct_stems(files, what: str) -> None:
    """Raises ValueError naming the first two of `files` (relative paths) that differ only in
    their extension (a.png, a.jpg): outputs named by the image's stem, as saliency maps and
    scops-predict's maps are, would be one file for both, the second written over the first."""
    seen: dict[str, str] = {}
    for rel in files:
        stem = pathlib.PurePosixPath(rel).with_suffix("").as_posix()
        if stem in seen:
            raise ValueError(
                f"{seen[stem]} and {rel} would share {what}{stem}.png, one written over the "
                "other: rename one of them"
            )
        seen[stem] = rel
