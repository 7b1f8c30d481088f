"""End-of-training evaluation and the run's `metrics.json`.

The model is scored through `scops_fast.eval.evaluate_with_baselines` (landmark regression
fitted on `evaluation.train_dataset`, keypoint and dense part NMI/ARI, foreground IoU on
`evaluation.test_dataset`), next to the two baselines (one part everywhere; k-means on
foreground pixel coordinates) scored by the same code on the same images, with the pass/fail
criteria against the k-means baseline."""

from __future__ import annotations

import pathlib

import torch

from scops_fast.metrics_file import strict_json
from scops_fast.train.config import Config, ConfigError
from scops_fast.train.data import dataset_from_spec
from scops_fast.train.loading import predict_parts

METRICS_JSON = "metrics.json"


def evaluation_sets(cfg: Config) -> tuple:
    """(train set or None, test set) of `cfg.evaluation`, built at data.image_size. The
    trainer builds them before its first step, so that a mistake in `evaluation.*` is found
    then and not after the last."""
    e, size = cfg.evaluation, cfg.data.image_size
    train_set = None
    if e.train_dataset is not None:
        train_set = dataset_from_spec(e.train_dataset, e.train_args, size, "evaluation.train_")
    test_set = dataset_from_spec(e.test_dataset, e.test_args, size, "evaluation.test_")
    for field, data in (("train", train_set), ("test", test_set)):
        if data is not None and len(data) == 0:
            raise ConfigError(f"evaluation.{field}_dataset: {type(data).__name__} has no items")
    return train_set, test_set


def evaluate_network(net, cfg: Config, sets: tuple | None = None, progress: bool = False) -> dict:
    """Numbers of `net` (put in eval mode, restored after) and of the baselines: the dict of
    `evaluate_with_baselines` plus `data`, what it was evaluated on. `sets`: those of
    `evaluation_sets(cfg)`, built here when None."""
    from scops_fast.eval.compare import evaluate_with_baselines

    e, size = cfg.evaluation, cfg.data.image_size
    train_set, test_set = evaluation_sets(cfg) if sets is None else sets
    was_training = net.training
    net.eval()
    try:
        result = evaluate_with_baselines(
            lambda images: predict_parts(net, images, size=size),
            train_set,
            test_set,
            cfg.model.num_parts,
            batch_size=e.batch_size,
            limit=e.limit,
            progress=progress,
        )
    finally:
        net.train(was_training)
    result = _plain(result)
    result["data"] = {
        "image_size": size,
        "train": None
        if e.train_dataset is None
        else {"dataset": e.train_dataset, "args": e.train_args, "n": len(train_set)},
        "test": {"dataset": e.test_dataset, "args": e.test_args, "n": len(test_set)},
        "limit": e.limit,
    }
    return result


def _plain(value):
    """Tensors and numpy scalars to Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def run_metrics(
    cfg: Config,
    *,
    steps: int,
    train_seconds: float,
    final_losses: dict | None = None,
    evaluation: dict | None = None,
    world_size: int = 1,
    device: str = "cpu",
) -> dict:
    """The content of metrics.json: evaluation (model, baselines, criteria) when there is
    one, and the training run's length, time and last losses."""
    out: dict = {"run": cfg.name}
    if evaluation is not None:
        ev = dict(evaluation)
        for key in ("criteria", "model", "baselines", "baseline_notes", "data"):
            if key in ev:
                out[key] = ev.pop(key)
        out["evaluation_seconds"] = ev.pop("eval_seconds", None)
    out["training"] = {
        "steps": int(steps),
        # Millisecond resolution: a short run still reports a positive time.
        "wall_time_s": round(float(train_seconds), 3),
        "steps_per_s": round(steps / train_seconds, 3) if train_seconds > 0 else None,
        "seed": cfg.seed,
        "processes": world_size,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "final_losses": dict(final_losses or {}),
    }
    return out


def write_metrics(out_dir, metrics: dict) -> pathlib.Path:
    path = pathlib.Path(out_dir) / METRICS_JSON
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(strict_json(metrics, indent=2) + "\n")
    tmp.replace(path)
    return path
