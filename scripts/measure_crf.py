"""What `scops-predict --crf` changes: the demo checkpoint's part maps on SyntheticParts' held-out
images, scored by scops_fast.eval with and without the dense-CRF refinement, written to
docs/crf_results.json.

    make demo                                              # the checkpoint, runs/demo
    nice -n 10 .venv/bin/python scripts/measure_crf.py     # about 20 s here

It also rewrites docs/training.md's table (beside `scops-predict --crf`), which a test compares
with the JSON; --no-readme leaves it.

The images are the demo's evaluation split (300 test images, the landmark regression fitted on
500 train images, both refined alike), at the training size. Scored: dense part NMI/ARI over the
true foreground, keypoint NMI, foreground IoU (arg-max != background against the true
foreground) and the landmark error. Three settings: the network's probabilities; the CRF with
scops-predict's parameters; the same CRF without its appearance (bilateral) kernel, to show
what each kernel does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import torch

from scops_fast.eval import PartEvaluator
from scops_fast.eval.evaluate import item_batches, stack_items
from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.config import config_from_dict
from scops_fast.train.crf import CRFParams, dense_crf
from scops_fast.train.evaluation import evaluation_sets
from scops_fast.train.loading import load_model, predict_parts

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = (
    "part_nmi",
    "part_ari",
    "keypoint_nmi",
    "fg_iou",
    "fg_iou_pooled",
    "landmark_error_test",
    "empty_parts",
)
SETTINGS = {
    "network": None,
    "crf": CRFParams(),
    "crf_gaussian_only": CRFParams(bilateral_weight=0.0),
}


def measure(run: pathlib.Path, batch_size: int = 50) -> dict:
    torch.set_num_threads(1)
    cfg = config_from_dict(load_checkpoint(run)["config"], source=str(run))
    net = load_model(run)
    e, size = cfg.evaluation, cfg.data.image_size
    train_set, test_set = evaluation_sets(cfg)
    evaluators = {name: PartEvaluator() for name in SETTINGS}
    seconds = dict.fromkeys(SETTINGS, 0.0)

    def refined(images):
        probs = predict_parts(net, images, size=size)
        for name, params in SETTINGS.items():
            start = time.perf_counter()
            out = probs if params is None else dense_crf(probs, images, params)
            seconds[name] += time.perf_counter() - start
            yield name, out

    for items in item_batches(train_set, batch_size, None):
        images, landmarks = stack_items(items, "img"), stack_items(items, "landmarks")
        for name, probs in refined(images):
            evaluators[name].add_train(probs, landmarks)
    for items in item_batches(test_set, batch_size, None):
        images = stack_items(items, "img")
        for name, probs in refined(images):
            evaluators[name].add_test(
                probs,
                landmarks=stack_items(items, "landmarks"),
                parts=stack_items(items, "parts"),
                fg=stack_items(items, "fg"),
                visible=stack_items(items, "visible"),
            )
    n_images = len(train_set) + len(test_set)
    results = {}
    for name, evaluator in evaluators.items():
        scores = evaluator.compute()
        results[name] = {key: scores[key] for key in KEYS}
        results[name]["seconds_per_image"] = round(seconds[name] / n_images, 5)
        params = SETTINGS[name]
        results[name]["params"] = None if params is None else params.to_dict()
    return {
        "checkpoint": str(run),
        "run_steps": cfg.steps,
        "data": {
            "image_size": size,
            "train": {"dataset": e.train_dataset, "args": e.train_args},
            "test": {"dataset": e.test_dataset, "args": e.test_args},
        },
        "results": results,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
        "date": datetime.date.today().isoformat(),
    }


ROW_NAMES = {
    "network": "network",
    "crf": "`--crf`",
    "crf_gaussian_only": "`--crf` without the bilateral kernel",
}


def readme_table(report: dict) -> str:
    """docs/training.md's table beside scops-predict (tests/test_crf.py checks it is there)."""
    lines = [
        "| | part NMI (foreground) | keypoint NMI | foreground IoU | landmark error "
        "| CRF time per image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        ms = f"{1000 * r['seconds_per_image']:.0f} ms" if r["params"] is not None else ""
        cells = [f"{r[k]:.3f}" for k in ("part_nmi", "keypoint_nmi", "fg_iou")]
        cells += [f"{r['landmark_error_test']:.3f}", ms]
        lines.append(f"| {ROW_NAMES[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_readme(report: dict, readme: pathlib.Path = ROOT / "docs" / "training.md") -> None:
    """Replaces docs/training.md's table (its header line onwards, while lines start with |)."""
    table = readme_table(report)
    lines = readme.read_text().splitlines(keepends=True)
    header = table.splitlines(keepends=True)[0]
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    readme.write_text("".join(lines[:start]) + table + "".join(lines[end:]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=pathlib.Path, default=ROOT / "runs" / "demo")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "crf_results.json")
    p.add_argument(
        "--no-readme", action="store_true", help="leave docs/training.md's table as it is"
    )
    args = p.parse_args(argv)
    report = measure(args.run)
    report["checkpoint"] = os.path.relpath(args.run.resolve(), ROOT)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report["results"].items():
        print(
            f"{name:18s} part NMI {r['part_nmi']:.3f}  keypoint NMI {r['keypoint_nmi']:.3f}  "
            f"fg IoU {r['fg_iou']:.3f}  landmark error {r['landmark_error_test']:.4f}  "
            f"{1000 * r['seconds_per_image']:.1f} ms/image",
            file=sys.stderr,
        )
    if not args.no_readme:
        update_readme(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
