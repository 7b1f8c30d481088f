"""scops-predict's throughput, batched and with reader processes against one image at a time on
the main thread (its CPU default), and its memory over a long folder (make bench-predict):

    python benchmarks/predict_throughput.py --out benchmarks/results/predict.json

Both networks are randomly initialised (the throughput does not depend on the weights) and run
at 256x256, the demo network (`configs/demo.json`'s `small`) and the folder preset's DeepLab
ResNet-50. The images are 256x256 PNGs of SyntheticParts, so reading costs what it costs for a
real folder of that size. Each configuration predicts the same folder into a fresh output
folder, in the same run, one after the other: images/s and the ratio against the per-image
loop. `flat` predicts `--flat-images` small images with the demo network and samples the
process's resident memory as the records grow.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import threading
import time

import memprobe
import torch
from PIL import Image

from scops_fast.data import SyntheticParts
from scops_fast.train.config import load_config
from scops_fast.train.loading import build_network
from scops_fast.train.predict import RECORDS, default_workers, predict_folder

NETWORKS = {"demo": "demo", "deeplab_resnet50": "folder"}  # name -> preset its model comes from


def write_images(folder: pathlib.Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = SyntheticParts(min(n, 64), size=size, seed=5)
    for i in range(n):
        rgb = (data[i % len(data)]["img"] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(rgb).save(folder / f"{i:05d}.png")


def network(name: str, size: int):
    cfg = load_config(NETWORKS[name])
    net = build_network(cfg.model, load_pretrained=False).eval()
    net.image_size = size
    return net


def rss_mb() -> float:
    return memprobe.status_kb()["VmRSS"] / 1024


def timed(net, images, out, **kwargs) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        predict_folder(net, images, out, progress=False, **kwargs)
    return time.perf_counter() - start


def throughput(args, scratch: pathlib.Path) -> list[dict]:
    rows = []
    workers = args.workers if args.workers is not None else max(1, default_workers("cuda"))
    settings = [
        ("one image at a time", {"batch_size": 1, "workers": 0}),
        (f"batch {args.batch}, main thread", {"batch_size": args.batch, "workers": 0}),
        (
            f"batch {args.batch}, {workers} reader(s)",
            {"batch_size": args.batch, "workers": workers},
        ),
    ]
    for name in args.networks.split(","):
        n = args.images[name]
        images = scratch / f"images_{args.size}_{n}"
        if not images.exists():
            write_images(images, n, args.size)
        net = network(name, args.size)
        timed(net, images, scratch / f"warm_{name}", batch_size=2, workers=0)  # first-call costs
        base = None
        for label, kwargs in settings:
            seconds = timed(net, images, scratch / f"out_{name}_{len(rows)}", **kwargs)
            per_s = n / seconds
            base = base or per_s
            rows.append(
                {
                    "network": name,
                    "setting": label,
                    **kwargs,
                    "images": n,
                    "seconds": round(seconds, 6),
                    "images_per_s": round(per_s, 2),
                    "vs_one_at_a_time": round(per_s / base, 2),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def flat_memory(args, scratch: pathlib.Path) -> dict:
    n = args.flat_images
    images = scratch / f"flat_{n}"
    write_images(images, n, 32)
    net = network("demo", 32)
    out = scratch / "flat_out"
    samples: list[tuple[int, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            records = out / RECORDS
            count = records.read_bytes().count(b"\n") if records.exists() else 0
            samples.append((count, rss_mb()))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds = timed(net, images, out, batch_size=args.batch, workers=0)
    stop.set()
    sampler.join()
    samples.append((n, rss_mb()))
    early = [rss for count, rss in samples if n * 0.1 <= count <= n * 0.2]
    late = [rss for count, rss in samples if count >= n * 0.9]
    return {
        "images": n,
        "size": 32,
        "seconds": round(seconds, 1),
        "rss_mb_at_10_to_20_percent": round(max(early), 1) if early else None,
        "rss_mb_at_90_to_100_percent": round(max(late), 1) if late else None,
        "samples": [(c, round(r, 1)) for c, r in samples],
    }


def table(data: dict) -> str:
    lines = [
        "| network | setting | images | s | images/s | vs one at a time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in data["throughput"]:
        lines.append(
            f"| {r['network']} | {r['setting']} | {r['images']} | {r['seconds']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['vs_one_at_a_time']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--networks", default="demo,deeplab_resnet50")
    p.add_argument("--demo-images", type=int, default=400)
    p.add_argument("--deeplab-images", type=int, default=48)
    p.add_argument("--flat-images", type=int, default=10000, help="0 skips the memory run")
    args = p.parse_args(argv)
    args.images = {"demo": args.demo_images, "deeplab_resnet50": args.deeplab_images}
    with tempfile.TemporaryDirectory(prefix="scops_predict_bench_") as tmp:
        scratch = pathlib.Path(tmp)
        data = {
            "cpu": memprobe.cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0],
            "throughput": throughput(args, scratch),
        }
        if args.flat_images:
            data["flat"] = flat_memory(args, scratch)
    print(table(data))
    if "flat" in data:
        f = data["flat"]
        print(
            f"memory over {f['images']} images: {f['rss_mb_at_10_to_20_percent']} MB at 10-20%, "
            f"{f['rss_mb_at_90_to_100_percent']} MB at 90-100%"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
