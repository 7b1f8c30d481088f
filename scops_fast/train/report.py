"""The end-of-training report: part overlays on the first images of the data set,
the loss curves, and report.html with the final losses and evaluation numbers."""

from __future__ import annotations

import pathlib

import torch

from scops_fast import viz
from scops_fast.train.loading import predict_parts
from scops_fast.train.progress import read_metrics

PARTS_PNG, CURVES_PNG = "parts.png", "curves.png"


def write_training_report(
    out_dir,
    net,
    dataset,
    *,
    final: dict | None = None,
    extra_metrics: dict | None = None,
    count: int = 8,
    notes: str | None = None,
) -> pathlib.Path:
    """Writes parts.png, curves.png and report.html into `out_dir`; `extra_metrics`
    (e.g. {"evaluation": {...}}) join the table."""
    out_dir = pathlib.Path(out_dir)
    images = torch.stack(
        [torch.as_tensor(dataset[i]["img"]) for i in range(min(count, len(dataset)))]
    )
    was_training = net.training
    net.eval()
    try:
        probs = predict_parts(net, images)
    finally:
        net.train(was_training)
    viz.save_part_grid(out_dir / PARTS_PNG, images, probs)
    records = read_metrics(out_dir)
    viz.plot_curves(out_dir / CURVES_PNG, records)
    metrics = {"final losses": final or {}, "steps": records[-1]["step"] if records else 0}
    if records and records[-1].get("steps_per_s"):
        metrics["steps per second (last session)"] = records[-1]["steps_per_s"]
    if extra_metrics:
        metrics.update(extra_metrics)
    return viz.write_report(
        out_dir,
        metrics=metrics,
        images={
            "Parts (image / overlay with part centres / arg-max parts)": PARTS_PNG,
            "Training losses (means over each logging interval)": CURVES_PNG,
        },
        title=f"SCOPS run: {out_dir.name}",
        notes=notes,
    )
