"""`scops-predict` / `python -m scops_fast.cli.predict`: part maps, overlays and part centres for
a folder of new images (`scops_fast.train.predict` says what it writes and how it scales)."""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from scops_fast.cli.arguments import at_least, resolve_device
from scops_fast.data import ImageFolder
from scops_fast.data.imagefiles import check_distinct_stems, is_inside
from scops_fast.train.loading import load_any_model
from scops_fast.train.predict import (
    checkpoint_source,
    default_batch_size,
    default_workers,
    predict_folder,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="scops-predict", description="Part maps, overlays and part centres for new images."
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run (folder or checkpoint.pt) or an original SCOPS snapshot",
    )
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda, cuda:N"
    )
    p.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help="images per network call (default: 1 on the CPU, 8 on a GPU)",
    )
    p.add_argument(
        "--workers",
        type=at_least(0),
        default=None,
        help="reader processes (default: none on the CPU; on a GPU half the cores, at most 4)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every image (default: keep the complete results of an earlier run in --out)",
    )
    p.add_argument(
        "--crf",
        action="store_true",
        help="refine the part probabilities with a dense CRF (needs pydensecrf2: "
        "pip install 'scops_fast[crf]')",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    images = pathlib.Path(args.images)
    out = pathlib.Path(args.out)
    try:
        if not images.is_dir():
            raise FileNotFoundError(f"--images: {images} is not a folder")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {out} is a file; name a folder")
        # Listed before the model is loaded, so that a clash of names fails at once.
        files = ImageFolder(images).files
        check_distinct_stems(files, "the part map maps/")
        if is_inside(out, images):
            raise ValueError(
                f"--out: {out} is inside --images {images}; its maps and overlays would be "
                "read as images by the next run"
            )
        device = resolve_device(args.device)
        workers = default_workers(device) if args.workers is None else args.workers
        batch_size = default_batch_size(device) if args.batch_size is None else args.batch_size
        crf = None
        if args.crf:
            from scops_fast.train.crf import INSTALL_HINT, CRFParams, crf_available

            # Before the model is loaded and any folder written: a missing extra is one line.
            if not crf_available():
                raise ValueError(f"--crf: {INSTALL_HINT}")
            crf = CRFParams()
        net, kind = load_any_model(args.checkpoint, device)
        with torch.no_grad():
            done = predict_folder(
                net,
                images,
                out,
                batch_size=batch_size,
                workers=workers,
                progress=not args.no_progress,
                crf=crf,
                overwrite=args.overwrite,
                source=checkpoint_source(args.checkpoint),
                files=files,
            )
    except (FileNotFoundError, ValueError) as exc:
        print(f"scops-predict: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"scops-predict: interrupted; the finished images are kept in {out}: the same "
            "command goes on from there",
            file=sys.stderr,
        )
        return 130
    skipped = f", {len(done['skipped'])} unreadable skipped" if done["skipped"] else ""
    reused = f" ({done['reused']} from an earlier run)" if done["reused"] else ""
    print(
        f"scops-predict: {done['images']} images{reused}{skipped} ({kind} checkpoint, "
        f"K={net.num_parts}{', dense CRF' if crf is not None else ''}, {device}); "
        f"maps in {out / 'maps'}, overlays in {out / 'overlays'}, centres in {out / 'parts.csv'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
