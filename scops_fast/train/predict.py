"""`scops-predict`: apply a trained model to new images, by the batch, resumably.

    scops-predict --checkpoint runs/cats --images photos/ --out parts/

For every image under `--images` (searched recursively; any size; read as viewers show it:
upright by its EXIF orientation, see `scops_fast.data.imagefiles.displayed_rgb`), it writes:
- `OUT/maps/<relative path>.png`: the arg-max part of each pixel as an 8-bit palette image
  (index 0 background, 1..K the parts; the palette holds the parts' colours);
- `OUT/overlays/<relative path>.jpg`: the image tinted by its parts, each part that wins
  at least one pixel marked at its centre;
- one row per image and part in `OUT/parts.csv` and the same in `OUT/parts.json`: the
  part's pixels and its centre (x, y) in the image's pixels (the probability-weighted mean
  position, as the landmark evaluation uses), left empty for a part that wins no pixel.

How it scales:
- a DataLoader's worker processes (`--workers`) read each image and resize it to the size the
  network was trained at while the network runs on the previous batch (`--batch-size`); the
  probabilities are resized back to each image's own size;
- every file is written under a temporary name and renamed, so an interruption leaves no
  half-written map or overlay;
- each finished image appends one line to `OUT/parts.jsonl`; a rerun of the same command skips
  the images whose line and files are there (`--overwrite` redoes them). parts.csv and
  parts.json are written from that file at the end, streamed, so memory stays flat however
  many images there are;
- `OUT/predict.json` records the checkpoint (path, size, time) and the CRF settings: a rerun
  with another model refuses to mix its results with the old ones unless `--overwrite`.

The checkpoint is a run of ours (checkpoint.pt or its folder) or a snapshot of the original
SCOPS trainer. `--crf` refines each image's part probabilities with a dense CRF
(`scops_fast.train.crf`, needs pydensecrf2) before anything is written.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import sys

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from scops_fast.data import ImageFolder
from scops_fast.data.imagefiles import (
    IMAGE_EXTENSIONS,
    UNREADABLE,
    check_distinct_stems,
    load_rgb,
    save_image_atomic,
)
from scops_fast.metrics_file import strict_json
from scops_fast.terminal import progress_bar
from scops_fast.train.loading import (
    framed_input,
    letterboxed,
    network_logits,
    network_size,
    probabilities_from,
)

RECORDS = "parts.jsonl"
STATE = "predict.json"


def default_batch_size(device: str = "cpu") -> int:
    """Images per network call. On a GPU 8. On the CPU 1: `make bench-predict` measured
    batches of 8 at 0.77x (DeepLab) and 0.92x (demo network) the images/s of one image at a
    time at 256x256, as a batch's activations leave the caches."""
    return 1 if torch.device(device).type == "cpu" else 8


def default_workers(device: str = "cpu") -> int:
    """Reader processes beside the network. On a GPU: half the cores, at most 4, so the
    images are read while the GPU works. On the CPU: none, since the network's threads
    already use every core (`make bench-predict`: a reader process gained nothing on 2
    cores)."""
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def describe_parts(probs: torch.Tensor, labels: torch.Tensor | None = None) -> list[dict]:
    """Per part of probs (K+1, H, W): its pixels (arg-max area) and centre, None when empty.
    labels: the arg-max (H, W), when already known."""
    from scops_fast import viz

    labels = viz.part_labels(probs[None])[0] if labels is None else labels
    centres = viz.part_centres(probs[None])[0]
    out = []
    for k in range(1, probs.shape[0]):
        pixels = int((labels == k).sum())
        centre = [round(float(v), 2) for v in centres[k - 1]] if pixels else None
        out.append({"part": k, "pixels": pixels, "center": centre})
    return out


class _Images(Dataset):
    """Each image as (3, H, W) uint8 at its own size plus the network's input at net_size
    (None: the image's own size), or the reason it cannot be read."""

    def __init__(self, root, files: list[str], net_size, dtype: torch.dtype, letterbox: bool):
        self.root, self.files, self.net_size, self.dtype = root, files, net_size, dtype
        self.letterbox = letterbox

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        rel = self.files[i]
        try:
            pixels = np.asarray(load_rgb(self.root / rel)).copy()
        except UNREADABLE as err:
            return {"rel": rel, "error": f"{type(err).__name__}: {err}"}
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        x = image[None].to(self.dtype) / 255.0
        net_size = self.net_size or tuple(image.shape[-2:])
        net_input, box = framed_input(x, net_size, self.letterbox)
        return {"rel": rel, "image": image, "net": net_input[0], "box": box}


def _as_list(items):
    return items


def _outputs(out: pathlib.Path, rel: str) -> tuple[pathlib.Path, pathlib.Path]:
    return (out / "maps" / rel).with_suffix(".png"), (out / "overlays" / rel).with_suffix(".jpg")


def _write_image_outputs(out, rel, image01, probs, labels, colours, palette, parts) -> None:
    from scops_fast import viz

    map_path, overlay_path = _outputs(out, rel)
    label_image = Image.fromarray(labels.byte().numpy(), mode="P")
    label_image.putpalette(palette)
    save_image_atomic(label_image, map_path, "PNG")
    overlay = viz.to_pil(viz.overlay_parts(image01[None], probs[None], labels=labels[None])[0])
    drawn = [p for p in parts if p["center"] is not None]
    if drawn:
        centres = torch.tensor([p["center"] for p in drawn])
        overlay = viz.draw_centres(overlay, centres, colours[[p["part"] for p in drawn]])
    save_image_atomic(overlay, overlay_path, "JPEG", quality=92)


def _read_records(path: pathlib.Path):
    """The records of a parts.jsonl, one at a time; a line cut by an interruption is dropped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "image" in record:
                yield record


def _keep_complete(out: pathlib.Path) -> set[str]:
    """Rewrites parts.jsonl with only the images whose record and files are both there;
    returns their relative paths."""
    path = out / RECORDS
    done: set[str] = set()
    if not path.exists():
        return done
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in _read_records(path):
            rel = record["image"]
            if rel not in done and all(p.is_file() for p in _outputs(out, rel)):
                done.add(rel)
                f.write(strict_json(record) + "\n")
    os.replace(tmp, path)
    return done


def _check_state(out: pathlib.Path, state: dict, overwrite: bool) -> None:
    path = out / STATE
    if path.exists() and not overwrite:
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            before = None
        if before != state:
            raise ValueError(
                f"--out: {out} holds predictions of another checkpoint or other settings "
                f"(recorded in {path}); --overwrite redoes them, or name another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


def _write_summaries(out: pathlib.Path, skipped: list[str], crf_used) -> int:
    """parts.csv and parts.json from parts.jsonl, one record at a time; returns the count."""
    count = 0
    csv_tmp, json_tmp = out / ".parts.csv.partial", out / ".parts.json.partial"
    with (
        open(csv_tmp, "w", newline="", encoding="utf-8") as fc,
        open(json_tmp, "w", encoding="utf-8") as fj,
    ):
        writer = csv.writer(fc)
        writer.writerow(["image", "part", "pixels", "x", "y"])
        fj.write('{"images": {')
        for record in _read_records(out / RECORDS):
            rel = record["image"]
            for p in record["parts"]:
                x, y = p["center"] if p["center"] is not None else ("", "")
                writer.writerow([rel, p["part"], p["pixels"], x, y])
            entry = {"size": record["size"], "parts": record["parts"]}
            fj.write(("," if count else "") + f"\n {json.dumps(rel)}: {strict_json(entry)}")
            count += 1
        fj.write(f'\n}}, "skipped": {json.dumps(skipped)}, "crf": {json.dumps(crf_used)}}}\n')
    os.replace(csv_tmp, out / "parts.csv")
    os.replace(json_tmp, out / "parts.json")
    return count


def predict_folder(
    net,
    images: pathlib.Path,
    out: pathlib.Path,
    *,
    batch_size: int = 1,
    workers: int = 0,
    progress: bool = True,
    crf=None,
    overwrite: bool = False,
    source: dict | None = None,
    files: list[str] | None = None,
) -> dict:
    """Writes the maps, overlays, parts.csv and parts.json of every image under `images`.

    Returns {"images": images with results in OUT, "new": predicted by this call, "reused":
    found complete and skipped, "skipped": [relative paths that could not be read]}.
    crf: None, or the `CRFParams` of a dense-CRF refinement. source: what produced the model
    (recorded in OUT/predict.json; a different one refuses to resume). files: the images'
    paths relative to `images`, as `ImageFolder(images).files` lists them (listed here when
    None)."""
    from scops_fast import viz

    if crf is not None:
        from scops_fast.train.crf import dense_crf
    if batch_size < 1:
        raise ValueError(f"--batch-size: must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"--workers: must be 0 or more, got {workers}")
    images, out = pathlib.Path(images), pathlib.Path(out)
    if files is None:
        files = ImageFolder(images).files  # its listing; each image is read at its own size
    if not files:
        raise FileNotFoundError(f"no image files under {images} ({', '.join(IMAGE_EXTENSIONS)})")
    check_distinct_stems(files, "the part map maps/")
    crf_used = None if crf is None else crf.to_dict()
    _check_state(out, {"model": source or {}, "crf": crf_used}, overwrite)
    if overwrite:
        (out / RECORDS).unlink(missing_ok=True)
    done = _keep_complete(out)
    todo = [rel for rel in files if rel not in done]

    param = next(net.parameters())
    device = param.device
    net_size = network_size(net, None) if getattr(net, "image_size", None) is not None else None
    if net_size is None:
        batch_size = 1  # images at their own sizes do not stack
    loader = DataLoader(
        _Images(images, todo, net_size, param.dtype, letterboxed(net)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        pin_memory=device.type == "cuda",
        # Not fork: this process has torch's threads (and maybe CUDA) running, and a fork of
        # a threaded process can deadlock in the child (Python 3.12 warns of it). The readers
        # need only the data set, which pickles.
        multiprocessing_context="forkserver" if workers else None,
    )
    colours = viz.part_colours(net.num_parts)
    palette = colours.flatten().tolist()
    skipped: list[str] = []
    new = 0
    bar = progress_bar(len(files), initial=len(done), unit="image") if progress else None
    try:
        with open(out / RECORDS, "a", encoding="utf-8") as records:
            for batch in loader:
                good = [item for item in batch if "error" not in item]
                for item in batch:
                    if "error" in item:
                        skipped.append(item["rel"])
                        print(
                            f"scops-predict: skipping unreadable {images / item['rel']}: "
                            f"{item['error']}",
                            file=sys.stderr,
                            flush=True,
                        )
                if good:
                    x = torch.stack([item["net"] for item in good])
                    logits = network_logits(net, x.to(device=device, dtype=param.dtype))
                    for item, lg in zip(good, logits, strict=True):
                        rel, image01 = item["rel"], item["image"].float() / 255.0
                        size = image01.shape[-2:]
                        probs = probabilities_from(lg[None], size, item["box"])[0].float().cpu()
                        if crf is not None:
                            probs = dense_crf(probs, image01, crf)
                        labels = viz.part_labels(probs[None])[0]
                        parts = describe_parts(probs, labels)
                        _write_image_outputs(
                            out, rel, image01, probs, labels, colours, palette, parts
                        )
                        record = {"image": rel, "size": list(probs.shape[-2:]), "parts": parts}
                        records.write(strict_json(record) + "\n")
                        records.flush()
                        new += 1
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    count = _write_summaries(out, skipped, crf_used)
    return {"images": count, "new": new, "reused": len(done), "skipped": skipped}


def checkpoint_source(path) -> dict:
    """What identifies a checkpoint for a resumed prediction: its file, size and time."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    stat = path.stat()
    return {"checkpoint": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
