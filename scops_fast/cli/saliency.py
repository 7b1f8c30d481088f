"""`scops-saliency` / `python -m scops_fast.cli.saliency`: saliency maps for a folder of images
(`scops_fast.data.saliency`)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from scops_fast.data.imagefiles import IMAGE_EXTENSIONS, is_inside
from scops_fast.data.saliency import image_files, opencv_saliency, write_saliency_maps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="scops-saliency",
        description="Saliency maps (grey <stem>.png, white on the object, the image's size) "
        "for every image of a folder, estimated with OpenCV contrib's spectral-residual "
        "saliency, a centre prior and GrabCut. The maps can be passed to scops-train "
        "--saliency DIR; --saliency auto computes and caches the same maps itself.",
    )
    p.add_argument("images", metavar="DIR", help="folder of images (searched recursively)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (mirrors DIR's sub-folders); not inside DIR, where the maps "
        "would be read as images",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    images, out = pathlib.Path(args.images), pathlib.Path(args.out)
    try:
        if not images.is_dir():
            raise FileNotFoundError(f"DIR: {images} is not a folder")
        if is_inside(out, images):
            raise ValueError(
                f"--out: {out} is inside DIR {images}; its maps would be listed as images"
            )
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {out} exists and is not a folder")
        files = image_files(images)
        if not files:
            raise FileNotFoundError(
                f"DIR: no image files under {images} ({', '.join(IMAGE_EXTENSIONS)})"
            )
        opencv_saliency()
        done = write_saliency_maps(images, out, files, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, ImportError, PermissionError) as exc:
        print(f"scops-saliency: error: {exc}", file=sys.stderr)
        return 2
    for rel in done["skipped"]:
        print(f"scops-saliency: skipped unreadable {images / rel}", file=sys.stderr)
    skipped = f", {len(done['skipped'])} unreadable skipped" if done["skipped"] else ""
    print(f"scops-saliency: {done['written']} maps in {out}{skipped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
