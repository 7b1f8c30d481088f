"""CelebA "in the wild" (unaligned images) with the MAFL splits, as SCOPS evaluates faces.

Expected layout under `root` (the original CelebA release plus MAFL lists):

    img_celeba/000001.jpg ...          full, unaligned images
    list_landmarks_celeba.txt          count; header; "name x1 y1 ... x5 y5" (the UNALIGNED file,
                                       not list_landmarks_align_celeba.txt, which is for img_align)
    list_bbox_celeba.txt               count; header "image_id x_1 y_1 width height"; rows
    MAFL/training.txt                  one image name per line; MAFL/testing.txt the same
    <saliency_dir>/000001.png ...      optional grey saliency maps, same stem as the image
    list_imsize_celeba.txt             count; header; "name height width" (for min_face_area; not
                                       in the CelebA release: the original SCOPS authors' file)
    Saliency_Wild/000001.png ...       the original's saliency maps (saliency_dir="Saliency_Wild")

With crop="face" (default) each image is cropped to a square around its face box: side = the
box's longer side times (1 + 2 * margin), centred on the box (margin 0.1 by default, so 10% of
the longer side is added on every side); parts of the square outside the image are black. The
crop is resized to `size`. With crop=None the whole image is resized to `size`, its aspect ratio
not kept, as the original SCOPS reads CelebA-wild; center_crop=True then resizes it to 1.25 x
`size` and keeps the central `size` (the original's --center-crop).

Landmarks (lefteye, righteye, nose, leftmouth, rightmouth) and the box are returned in pixels of
the output, so landmarks[0], landmarks[1] are the eyes for the inter-ocular normaliser.

reader="opencv" reads and resizes exactly as the original does (OpenCV's BGR decode, its
bilinear resize of the 8-bit image by the factors size / image size, the saliency resized to
the image first, in float32; landmarks scaled by the same factors and truncated to integers);
it needs `opencv-python-headless`. reader="pil" uses PIL's bilinear resampling and keeps
sub-pixel landmarks.

Both readers turn a photo upright by its EXIF orientation tag (OpenCV's imread does so by
default, as in the original). reader="pil" also applies an embedded colour profile and
composites alpha on white (`imagefiles.displayed_rgb`); reader="opencv" keeps the original's
behaviour there: no profile, alpha dropped, 16-bit samples shifted to their high byte.
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
    opencv,
    parse_size,
    square_box,
)

__all__ = ["CelebAWild", "read_celeba_table", "CELEBA_LANDMARK_NAMES"]

CELEBA_LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
SPLITS = ("train", "test", "all", "all_but_test")
CROPS = ("face", None)
READERS = ("pil", "opencv")


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
    """CelebA in the wild (see the module docstring).

    Args:
        root: dataset folder.
        split: "train" (MAFL/training.txt), "test" (MAFL/testing.txt), "all" (every image with
            landmarks), "all_but_test" (every image with landmarks except the MAFL test
            images), or the path of a list file, relative to root or absolute (the original
            trains on "MAFL/celebA_training.txt").
        size: output size, int or (H, W).
        saliency_dir: folder of grey PNGs with the images' stems, relative to root or absolute
            (resized to the image first if their size differs); None gives a saliency of ones.
            A missing or unreadable saliency map makes its item unreadable (skipped and counted).
        margin: crop="face": added on each side of the square crop, as a fraction of the box's
            longer side.
        crop: "face" (square around the face box) or None (the whole image, as the original).
        min_face_area: keep only images whose face box covers at least this fraction of the
            image (the original's celeba_th, 0.3; reads list_imsize_celeba.txt).
        reader: "pil" or "opencv" (the original's exact arithmetic; see the module docstring).
        center_crop: crop=None only: resize to 1.25 x size, keep the centre (the original's flag).

    Item: img (3, H, W) float32 in [0, 1]; saliency (H, W) float32; landmarks (5, 2) float32
    pixel (x, y); bbox (4,) float32 face box (x, y, w, h) in output pixels; name str; index int.
    """

    landmark_names = CELEBA_LANDMARK_NAMES

    def __init__(
        self,
        root,
        split="train",
        size=128,
        saliency_dir=None,
        margin=0.1,
        *,
        crop="face",
        min_face_area=0.0,
        reader="pil",
        center_crop=False,
    ):
        super().__init__()
        if crop not in CROPS:
            raise ValueError(f"crop: expected one of {list(CROPS)}, got {crop!r}")
        if reader not in READERS:
            raise ValueError(f"reader: expected one of {list(READERS)}, got {reader!r}")
        if center_crop and crop is not None:
            raise ValueError("center_crop: only with crop=None (the whole image resized)")
        self.root = pathlib.Path(root)
        self.size = parse_size(size)
        self.margin = float(margin)
        self.crop, self.reader, self.center_crop = crop, reader, bool(center_crop)
        if reader == "opencv":
            opencv()  # fail now, with the install hint, not in the first item
        self.saliency_dir = None
        if saliency_dir is not None:
            folder = pathlib.Path(saliency_dir)
            self.saliency_dir = folder if folder.is_absolute() else self.root / folder
            if not self.saliency_dir.is_dir() and pathlib.Path(saliency_dir).is_dir():
                self.saliency_dir = pathlib.Path(saliency_dir)
        self.landmarks = read_celeba_table(self.root / "list_landmarks_celeba.txt", 10)
        self.boxes = read_celeba_table(self.root / "list_bbox_celeba.txt", 4)
        names = self._split_names(split)
        missing = [n for n in names if n not in self.landmarks or n not in self.boxes]
        if missing:
            raise ValueError(
                f"{len(missing)} images of split {split!r} lack landmarks or a box: {missing[:3]}"
            )
        self.unfiltered = len(names)
        if min_face_area > 0:
            sizes = read_celeba_table(self.root / "list_imsize_celeba.txt", 2)
            unknown = [n for n in names if n not in sizes]
            if unknown:
                raise ValueError(
                    f"list_imsize_celeba.txt has no size for {len(unknown)} images: {unknown[:3]}"
                )
            names = [
                n
                for n in names
                if self.boxes[n][2] * self.boxes[n][3] >= min_face_area * np.prod(sizes[n])
            ]
        self.names = names

    def _split_names(self, split) -> list[str]:
        if split in ("train", "test"):
            return _read_list(
                self.root / "MAFL" / f"{'training' if split == 'train' else 'testing'}.txt"
            )
        if split in ("all", "all_but_test"):
            names = sorted(self.landmarks)
            if split == "all_but_test":
                test = set(_read_list(self.root / "MAFL" / "testing.txt"))
                names = [n for n in names if n not in test]
            return names
        path = pathlib.Path(split)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise ValueError(
                f"split: expected one of {list(SPLITS)} or a list file, got {split!r} "
                f"({path} is not a file)"
            )
        return _read_list(path)

    def __len__(self) -> int:
        return len(self.names)

    def _describe(self, index: int) -> str:
        return str(self.root / "img_celeba" / self.names[index])

    def _load(self, index: int) -> dict:
        if self.reader == "opencv":
            return self._load_opencv(self.names[index])
        name = self.names[index]
        im = load_rgb(self.root / "img_celeba" / name)
        x, y, w, h = self.boxes[name]
        if self.crop == "face":
            box = square_box(x, y, w, h, self.margin)
        elif self.center_crop:
            box = _central_box(im.size)
        else:
            box = None
        tf = CropResize(box, im.size, self.size)
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

    def _load_opencv(self, name: str) -> dict:
        cv2 = opencv()
        path = self.root / "img_celeba" / name
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"OpenCV cannot read {path}")
        src_h, src_w = bgr.shape[:2]
        sal = None
        if self.saliency_dir is not None:
            sal_path = self.saliency_dir / f"{pathlib.PurePath(name).stem}.png"
            grey = cv2.imread(str(sal_path), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise FileNotFoundError(f"no readable saliency map {sal_path}")
            sal = cv2.resize(grey.astype(np.float32) / 255.0, (src_w, src_h))
        out_h, out_w = self.size
        if self.center_crop:
            # The original's --center-crop: a square of 1.25 x the output height, its
            # centre kept (it assumes square outputs).
            large = int(out_h * 1.25)
            m = int((large - out_h) / 2)

            def resize(a):
                return cv2.resize(a, (large, large))[m : large - m, m : large - m]

            fx, fy, ox, oy = large / src_w, large / src_h, m, m
        else:
            fx, fy, ox, oy = out_w / src_w, out_h / src_h, 0, 0

            def resize(a):
                return cv2.resize(a, None, fx=fx, fy=fy)

        rgb = resize(bgr)[:, :, ::-1]
        marks = self.landmarks[name].reshape(5, 2)
        landmarks = np.stack(
            [[int(float(px) * fx) - ox, int(float(py) * fy) - oy] for px, py in marks]
        )
        x, y, w, h = self.boxes[name]
        return {
            "img": torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0,
            "saliency": torch.from_numpy(resize(sal)) if sal is not None else torch.ones(self.size),
            "landmarks": torch.from_numpy(landmarks.astype(np.float32)),
            "bbox": torch.tensor([(x * fx) - ox, (y * fy) - oy, w * fx, h * fy]).float(),
            "name": name,
        }


def _central_box(src_size) -> tuple[int, int, int, int]:
    """The source box whose resize to 1.25 x the output keeps the central output: 80%."""
    w, h = src_size
    return (round(w * 0.1), round(h * 0.1), round(w * 0.9), round(h * 0.9))
