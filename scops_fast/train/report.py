"""The end-of-training report: part overlays on the first images of the data set,
the loss curves, and report.html with the evaluation against the baselines, the
pass/fail criteria, the training time and the final losses."""

from __future__ import annotations

import pathlib

import torch

from scops_fast import viz
from scops_fast.train.loading import predict_parts
from scops_fast.train.progress import read_metrics

PARTS_PNG, CURVES_PNG = "parts.png", "curves.png"
PARTS_CAPTION = "Parts found on the first images (each row named on its left, colours below)"

#: Rows of the comparison table: (key in the evaluation dicts, label).
COMPARED = (
    ("landmark_error_test", "landmark regression error, test (lower is better)"),
    ("landmark_error_train", "landmark regression error, train"),
    ("keypoint_nmi", "keypoint NMI"),
    ("keypoint_ari", "keypoint ARI"),
    ("part_nmi", "dense foreground part NMI"),
    ("part_ari", "dense foreground part ARI"),
    ("fg_iou", "foreground IoU"),
)


def comparison_tables(metrics: dict) -> dict:
    """Captioned (header, rows) tables of metrics.json's content for `viz.write_report`."""
    tables = {}
    if "model" in metrics:
        base = metrics.get("baselines", {})
        columns = [("model", metrics["model"])] + [(name, base[name]) for name in base]
        rows = [
            [label, *(values.get(key) for _, values in columns)]
            for key, label in COMPARED
            if any(key in values for _, values in columns)
        ]
        header = ["metric", *(name.replace("_", " ") for name, _ in columns)]
        tables["Evaluation: model against the baselines"] = (header, rows)
    crit = metrics.get("criteria")
    if crit:
        rows = []
        if "landmark_error_ratio_vs_kmeans" in crit:
            rows.append(
                [
                    f"landmark error / k-means's (pass at most {crit['landmark_ratio_max']})",
                    crit["landmark_error_ratio_vs_kmeans"],
                    crit["landmark_ok"],
                ]
            )
        if "part_nmi_margin_vs_kmeans" in crit:
            rows.append(
                [
                    f"part NMI - k-means's (pass at least {crit['nmi_margin_min']})",
                    crit["part_nmi_margin_vs_kmeans"],
                    crit["nmi_ok"],
                ]
            )
        rows.append(["all criteria", "", crit.get("passed")])
        tables["Criteria against the k-means baseline"] = (["criterion", "value", "pass"], rows)
    train = metrics.get("training")
    if train:
        rows = [[k.replace("_", " "), v] for k, v in train.items() if not isinstance(v, dict)]
        if metrics.get("evaluation_seconds") is not None:
            rows.append(["evaluation time (s)", metrics["evaluation_seconds"]])
        rows += [[f"final {k}", v] for k, v in train.get("final_losses", {}).items()]
        tables["Training"] = (["", "value"], rows)
    return tables


def write_training_report(
    out_dir,
    net,
    dataset,
    *,
    metrics: dict | None = None,
    count: int = 8,
    notes: str | None = None,
) -> pathlib.Path:
    """Writes parts.png, curves.png and report.html into `out_dir`. `metrics`: the
    content of metrics.json (see `evaluation.run_metrics`), shown as tables."""
    out_dir = pathlib.Path(out_dir)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([torch.as_tensor(item["img"]) for item in items])
    was_training = net.training
    net.eval()
    try:
        probs = predict_parts(net, images)
    finally:
        net.train(was_training)
    truth = viz.true_parts(items, images.shape[-2:])
    viz.save_part_grid(
        out_dir / PARTS_PNG,
        images,
        probs,
        truth=truth,
        truth_names=getattr(dataset, "part_names", None) if truth is not None else None,
    )
    records = read_metrics(out_dir)
    viz.plot_curves(out_dir / CURVES_PNG, records)
    metrics = dict(metrics or {})
    details = {k: metrics[k] for k in ("data", "baseline_notes") if k in metrics}
    return viz.write_report(
        out_dir,
        tables=comparison_tables(metrics),
        metrics=details or None,
        images={
            PARTS_CAPTION: PARTS_PNG,
            "Training losses (means over each logging interval)": CURVES_PNG,
        },
        title=f"SCOPS run: {out_dir.name}",
        notes=notes,
    )
