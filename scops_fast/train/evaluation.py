"""End-of-training evaluation through `scops_fast.eval` (landmark regression, NMI/ARI,
foreground IoU), on the data sets named in the config's `evaluation` section."""

from __future__ import annotations

import json
import pathlib

from scops_fast.train.config import Config
from scops_fast.train.data import dataset_from_spec
from scops_fast.train.loading import predict_parts

EVAL_NAME = "eval.json"


def evaluate_network(net, cfg: Config) -> dict:
    """Evaluation numbers of `net` (put in eval mode, restored after)."""
    from scops_fast.eval import evaluate_dataset

    e, size = cfg.evaluation, cfg.data.image_size
    train_set = None
    if e.train_dataset is not None:
        train_set = dataset_from_spec(e.train_dataset, e.train_args, size, "evaluation.train_args")
    test_set = dataset_from_spec(e.test_dataset, e.test_args, size, "evaluation.test_args")
    was_training = net.training
    net.eval()
    try:
        metrics = evaluate_dataset(
            lambda images: predict_parts(net, images),
            train_set,
            test_set,
            batch_size=e.batch_size,
            limit=e.limit,
        )
    finally:
        net.train(was_training)
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}


def write_evaluation(out_dir, metrics: dict) -> pathlib.Path:
    path = pathlib.Path(out_dir) / EVAL_NAME
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path
