"""How good is `--saliency auto` where no maps are given? Measured on SyntheticParts, whose
true foreground is known, and written to docs/saliency_results.json:

1. foreground IoU against the true foreground (a map counts as foreground where >= 0.5), per
   image then averaged, and pooled over all pixels, of
   (a) our estimate (`scops_fast.data.saliency.estimate_saliency`),
   (b) the data set's own degraded saliency (a stand-in for a saliency model's output),
   (c) all ones (no saliency);
   plus the estimate's steps taken away one at a time (what each adds);
2. the demo (`scops-train --config demo`) trained with each of the three as its saliency
   (`data.args.saliency`), and its landmark error on the held-out test images.

    nice -n 10 .venv/bin/python scripts/measure_saliency.py            # about 20 min here
    .venv/bin/python scripts/measure_saliency.py --no-train            # IoU only, ~1 min

Training runs go to runs/saliency/<kind>/ and are resumed, so an interrupted measurement picks
up where it stopped and a finished run is only evaluated again. With --steps below the demo's
2500, the JSON records that the runs are shortened.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import torch

from scops_fast.data import PART_NAMES, SyntheticParts
from scops_fast.data.saliency import METHOD, estimate_saliency
from scops_fast.train.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

KINDS = ("estimate", "degraded", "ones")
#: The estimate with one step changed, to show what each step adds.
ABLATION = {
    "estimate": {},
    "no_grow (GrabCut's possible foreground = the thresholded score)": {"grow": 0.0},
    "work_side=64 (no upsampling of 64 px images)": {"work_side": 64},
    "no_grabcut (thresholded score)": {"grabcut": False},
    "no_centre_prior": {"centre_prior": False},
    "no_detector (GrabCut from the centre prior)": {"detector": None},
    "fine_grained detector": {"detector": "fine_grained"},
    "fine_grained, no centre prior, no grabcut": {
        "detector": "fine_grained",
        "centre_prior": False,
        "grabcut": False,
    },
    "spectral_residual, no centre prior, no grabcut": {"centre_prior": False, "grabcut": False},
}
MODEL_KEYS = (
    "landmark_error_test",
    "landmark_error_train",
    "part_nmi",
    "keypoint_nmi",
    "keypoint_on_background",
    "fg_iou",
)


def iou_summary(maps: list[torch.Tensor], parts: list[torch.Tensor]) -> dict:
    """IoU with the true foreground (mean over images, worst, 10th percentile, pooled), the
    share of the foreground covered (recall, per part too: thin parts are the ones a map
    misses) and of the background included."""
    pred = torch.stack(maps) >= 0.5
    labels = torch.stack(parts)
    gt = labels > 0
    inter = (pred & gt).flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double()
    per_image = inter / union.clamp_min(1)
    return {
        "mean": round(float(per_image.mean()), 4),
        "min": round(float(per_image.min()), 4),
        "p10": round(float(per_image.quantile(0.1)), 4),
        "pooled": round(float(inter.sum() / union.sum()), 4),
        "foreground_covered": round(float(pred[gt].double().mean()), 4),
        "background_included": round(float(pred[~gt].double().mean()), 4),
        "part_covered": {
            name: round(float(pred[labels == k + 1].double().mean()), 3)
            for k, name in enumerate(PART_NAMES)
        },
    }


def measure_iou(size: int, n: int, seed: int) -> dict:
    """Headline IoUs from the data set's three saliency kinds (what training sees), then the
    ablation on the same images."""
    sets = {k: SyntheticParts(n, size=size, seed=seed, saliency=k) for k in KINDS}
    parts = [sets["ones"][i]["parts"] for i in range(n)]
    out = {"images": n, "size": size, "seed": seed, "kinds": {}, "ablation": {}}
    for kind, ds in sets.items():
        t0 = time.perf_counter()
        maps = [ds[i]["saliency"] for i in range(n)]
        out["kinds"][kind] = iou_summary(maps, parts)
        out["kinds"][kind]["ms_per_image"] = round((time.perf_counter() - t0) / n * 1000, 1)
    rgbs = [
        (sets["ones"][i]["img"] * 255).round().byte().permute(1, 2, 0).numpy() for i in range(n)
    ]
    for name, options in ABLATION.items():
        maps = [torch.from_numpy(estimate_saliency(rgb, **options)).float() / 255 for rgb in rgbs]
        out["ablation"][name] = iou_summary(maps, parts)
    return out


def train_demo(kind: str, runs: pathlib.Path, steps: int | None) -> dict:
    # A changed estimate trains in a folder of its own; resuming the old one would only
    # evaluate it again.
    out = runs / (
        f"estimate-{hashlib.sha1(METHOD.encode()).hexdigest()[:8]}" if kind == "estimate" else kind
    )
    cmd = [
        sys.executable,
        "-m",
        "scops_fast.train",
        "--config",
        "demo",
        "--out",
        str(out),
        *(["--resume"] if (out / "checkpoint.pt").exists() else []),
        "--no-progress",
        "--set",
        f"data.args.saliency={json.dumps(kind)}",
    ]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    print(f"measure_saliency: {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run_result(out)


def run_result(out: pathlib.Path) -> dict:
    """The numbers of a finished run, from its metrics.json."""
    metrics = json.loads((out / "metrics.json").read_text())
    model = metrics["model"]
    result = {k: round(float(model[k]), 4) for k in MODEL_KEYS if k in model}
    kmeans = metrics.get("baselines", {}).get("kmeans", {})
    if "landmark_error_test" in kmeans:
        result["kmeans_landmark_error_test"] = round(float(kmeans["landmark_error_test"]), 4)
    ratio = metrics.get("criteria", {}).get("landmark_error_ratio_vs_kmeans")
    if ratio is not None:
        result["landmark_error_ratio_vs_kmeans"] = round(float(ratio), 3)
    result["steps"] = metrics["training"]["steps"]
    result["training_wall_time_s"] = metrics["training"]["wall_time_s"]
    result["run"] = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(ROOT / "docs" / "saliency_results.json"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "saliency"))
    p.add_argument("--steps", type=int, help="training steps (default: the demo's)")
    p.add_argument("--no-train", action="store_true", help="foreground IoU only")
    p.add_argument("--iou-images", type=int, default=300, help="images per IoU measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    path = pathlib.Path(args.json)
    results = json.loads(path.read_text()) if path.exists() else {}
    old_run = results.get("demo_training", {}).get("runs", {}).get("estimate")
    if results.get("method") not in (None, METHOD) and old_run:
        # What earlier versions of the estimate measured, kept beside the current one.
        results.setdefault("earlier_estimates", {})[results["method"]] = {
            "foreground_iou": {
                size: r["kinds"]["estimate"] for size, r in results["foreground_iou"].items()
            },
            "demo_training": old_run,
        }
    for earlier in results.get("earlier_estimates", {}).values():
        run = ROOT / earlier["demo_training"]["run"]
        if (run / "metrics.json").exists():  # numbers added to the script since
            earlier["demo_training"] = run_result(run)

    def save():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")

    demo = load_config("demo")
    test = demo.evaluation.test_args  # the images the demo's landmark error is measured on
    results.update(
        {
            "about": __doc__.split("\n\n")[0],
            "method": METHOD,
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
        }
    )
    results["foreground_iou"] = {
        f"{size}px": measure_iou(size, args.iou_images, test["seed"])
        for size in (demo.data.image_size, 128)
    }
    save()
    print(json.dumps(results["foreground_iou"], indent=1), file=sys.stderr)
    if args.no_train:
        return 0

    steps = args.steps if args.steps is not None else demo.steps
    training = {
        "config": "demo",
        "steps": steps,
        "full_demo": steps == demo.steps,
        "note": "the demo preset with data.args.saliency set; runs one after another, "
        "nice -n 10, one torch thread each, on a machine shared with other work",
        "runs": {},
    }
    results["demo_training"] = training
    for kind in KINDS:
        training["runs"][kind] = train_demo(
            kind, pathlib.Path(args.runs), None if steps == demo.steps else steps
        )
        save()
    print(json.dumps(training, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
