"""`scops-predict`: apply a trained model to new images.

    scops-predict --checkpoint runs/cats --images photos/ --out parts/

For every image under `--images` (searched recursively; any size), it writes:
- `OUT/maps/<relative path>.png`: the arg-max part of each pixel as an 8-bit palette image
  (index 0 background, 1..K the parts; the palette holds the parts' colours);
- `OUT/overlays/<relative path>.jpg`: the image tinted by its parts, each part that wins
  at least one pixel marked at its centre;
- one row per image and part in `OUT/parts.csv` and the same in `OUT/parts.json`: the
  part's pixels and its centre (x, y) in the image's pixels (the probability-weighted mean
  position, as the landmark evaluation uses), left empty for a part that wins no pixel.

The checkpoint is a run of ours (checkpoint.pt or its folder) or a snapshot of the original
SCOPS trainer; the network sees each image at the size it was trained at. `--crf` refines each
image's part probabilities with a dense CRF (`scops_fast.train.crf`, needs pydensecrf2) before
anything is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import torch
from PIL import Image

from scops_fast.data import ImageFolder
from scops_fast.data.imagefiles import IMAGE_EXTENSIONS, UNREADABLE, image_tensor, load_rgb
from scops_fast.terminal import progress_bar
from scops_fast.train.loading import load_any_model, predict_parts


def describe_parts(probs: torch.Tensor) -> list[dict]:
    """Per part of probs (K+1, H, W): its pixels (arg-max area) and centre, None when empty."""
    from scops_fast import viz

    labels = probs.argmax(0)
    centres = viz.part_centres(probs[None])[0]
    out = []
    for k in range(1, probs.shape[0]):
        pixels = int((labels == k).sum())
        centre = [round(float(v), 2) for v in centres[k - 1]] if pixels else None
        out.append({"part": k, "pixels": pixels, "center": centre})
    return out


def predict_folder(
    net, images: pathlib.Path, out: pathlib.Path, progress: bool = True, crf=None
) -> dict:
    """Writes the maps, overlays, parts.csv and parts.json of every image; returns
    {"images": n, "skipped": [relative paths that could not be read]}. crf: None, or the
    `CRFParams` of a dense-CRF refinement of every image's probabilities."""
    from scops_fast import viz

    if crf is not None:
        from scops_fast.train.crf import dense_crf

    files = ImageFolder(images).files  # its listing; each image is read at its own size
    if not files:
        raise FileNotFoundError(f"no image files under {images} ({', '.join(IMAGE_EXTENSIONS)})")
    colours = viz.part_colours(net.num_parts)
    palette = colours.flatten().tolist()
    results, skipped = {}, []
    bar = progress_bar(len(files), unit="image") if progress else None
    device = next(net.parameters()).device
    for rel in files:
        try:
            image = image_tensor(load_rgb(images / rel))[None]
        except UNREADABLE:
            skipped.append(rel)
            continue
        probs = predict_parts(net, image.to(device)).cpu()[0]
        if crf is not None:
            probs = dense_crf(probs, image[0], crf)
        parts = describe_parts(probs)
        results[rel] = {"size": list(probs.shape[-2:]), "parts": parts}
        map_path = (out / "maps" / rel).with_suffix(".png")
        map_path.parent.mkdir(parents=True, exist_ok=True)
        labels = Image.fromarray(probs.argmax(0).byte().numpy(), mode="P")
        labels.putpalette(palette)
        labels.save(map_path)
        overlay = viz.to_pil(viz.overlay_parts(image, probs[None])[0])
        drawn = [p for p in parts if p["center"] is not None]
        if drawn:
            centres = torch.tensor([p["center"] for p in drawn])
            overlay = viz.draw_centres(overlay, centres, colours[[p["part"] for p in drawn]])
        overlay_path = (out / "overlays" / rel).with_suffix(".jpg")
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        overlay.save(overlay_path, quality=92)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    crf_used = None if crf is None else crf.to_dict()
    report = {"images": results, "skipped": skipped, "crf": crf_used}
    (out / "parts.json").write_text(json.dumps(report, indent=1))
    with open(out / "parts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "part", "pixels", "x", "y"])
        for rel, result in results.items():
            for p in result["parts"]:
                x, y = p["center"] if p["center"] is not None else ("", "")
                writer.writerow([rel, p["part"], p["pixels"], x, y])
    return {"images": len(results), "skipped": skipped}


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
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--crf",
        action="store_true",
        help="refine the part probabilities with a dense CRF (needs pydensecrf2: "
        "pip install 'scops_fast[crf]')",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    images = pathlib.Path(args.images)
    try:
        if not images.is_dir():
            raise FileNotFoundError(f"--images: {images} is not a folder")
        out = pathlib.Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {out} is a file; name a folder")
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"--device: {args.device!r} asked for, but torch sees no CUDA device on this "
                "machine; use --device cpu"
            )
        crf = None
        if args.crf:
            from scops_fast.train.crf import INSTALL_HINT, CRFParams, crf_available

            # Before the model is loaded and any folder written: a missing extra is one line.
            if not crf_available():
                raise ValueError(f"--crf: {INSTALL_HINT}")
            crf = CRFParams()
        net, kind = load_any_model(args.checkpoint, args.device)
        with torch.no_grad():
            done = predict_folder(net, images, out, progress=not args.no_progress, crf=crf)
    except (FileNotFoundError, ValueError) as exc:
        print(f"scops-predict: error: {exc}", file=sys.stderr)
        return 2
    skipped = f", {len(done['skipped'])} unreadable skipped" if done["skipped"] else ""
    print(
        f"scops-predict: {done['images']} images{skipped} ({kind} checkpoint, K={net.num_parts}"
        f"{', dense CRF' if crf is not None else ''}); "
        f"maps in {out / 'maps'}, overlays in {out / 'overlays'}, centres in {out / 'parts.csv'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
