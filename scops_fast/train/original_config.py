"""The original SCOPS trainer's experiment files (`exps/*.json`, the flags of its train.py)
as our config: `scops-train --config SCOPS_K8_retrain.json` runs that experiment with the
original's behaviour (the `celeba-k8-original` preset's quirks) and its settings.

Every field the original reads is mapped or, where it has no effect here, named in a
warning with the reason; a field the original does not know is named in a warning too.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

from scops_fast.train.config import Config, ConfigError

#: Keys that mark a JSON object as one of the original's experiment files.
MARKERS = ("exp_name", "lambda_con", "lambda_sc", "num_parts", "ref_layer")

ARCHS = {"DeepLab50_2branch": "deeplab_resnet50", "DeepLab_2branch": "deeplab_resnet101"}
DATASETS = {"CelebAWild": "celeba"}

#: Fields the original parses but that change nothing here, and why.
NO_EFFECT = {
    "tb_dir": "TensorBoard logs go to the run folder (--out)",
    "snapshot_dir": "checkpoints go to the run folder (--out)",
    "vis_interval": "the run's report and log replace the original's visdom views",
    "gpu": "the device is chosen with --set device=cuda",
    "random_mirror": "the original's CelebA loader ignores it",
    "random_scale": "the original's CelebA loader ignores it",
    "ignore_saliency_fg": "the original's trainer never reads it",
    "ignore_small_parts": "the original's trainer never reads it",
    "self_ref_coord": "the original's trainer never reads it",
    "detach_k": "the original's trainer never reads it",
    "kp_threshold": "the original's trainer never reads it",
    "lambda_orthonamal": "the original's trainer reads lambda_orthonormal",
    "arg_file": "this file is the argument file",
}


def is_original_experiment(data: Any) -> bool:
    """An original experiment file: its flags at the top level, `model` a name, not a section."""
    return (
        isinstance(data, dict)
        and not isinstance(data.get("model"), dict)
        and any(k in data for k in MARKERS)
    )


def _size(value) -> int:
    try:
        h, w = (int(v) for v in str(value).split(","))
    except ValueError:
        raise ConfigError(f"input_size: expected 'H,W', got {value!r}") from None
    if h != w:
        raise ConfigError(f"input_size: the trainer takes square images, got {value!r}")
    return h


def _data_list(path: str, data_dir: str | None) -> str:
    """The original reads data_list relative to its working directory; our list files are
    relative to the data root when they sit under it."""
    p, root = pathlib.PurePath(path), pathlib.PurePath(data_dir or "")
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(pathlib.Path(path).resolve())


def overrides_from_original(data: dict, source: str = "the experiment file") -> dict[str, Any]:
    """Dotted overrides of `celeba-k8-original` for an original experiment dict."""
    out: dict[str, Any] = {}
    ignored, unknown = [], []
    args: dict[str, Any] = {}

    def put(key, value):
        out[key] = value

    for key, value in data.items():
        if key == "exp_name":
            put("name", value)
        elif key == "num_parts":
            put("model.num_parts", int(value))
        elif key == "model":
            if value not in ARCHS:
                raise ConfigError(
                    f"{source}: model {value!r} is not supported; expected one of {list(ARCHS)}"
                )
            put("model.arch", ARCHS[value])
        elif key == "restore_from":
            if value in (None, ""):
                put("model.pretrained", "torchvision")  # the original's file, from the hub cache
            elif value == "None":
                put("model.pretrained", None)
            else:
                put("model.pretrained", str(value))
        elif key == "restore_part_basis":
            if value:
                raise ConfigError(f"{source}: restore_part_basis is not supported")
        elif key == "learning_rate_w":
            put("optim.basis_lr", float(value))
        elif key == "ref_net":
            if value != "vgg19":
                raise ConfigError(f"{source}: ref_net {value!r}: only 'vgg19' is supported")
            put("features.kind", "vgg19")
        elif key == "ref_layer":
            put("features.layers", [s for s in str(value).split(",") if s] or ["relu5_4"])
        elif key == "ref_norm":
            put("features.normalize", bool(value))
        elif key == "no_sal_masking":
            put("features.saliency", not value)
        elif key == "num_workers":
            put("data.num_workers", int(value))
        elif key == "dataset":
            kind = str(value).split("_")[0]
            if kind not in DATASETS:
                raise ConfigError(
                    f"{source}: dataset {value!r} is not supported; expected one of "
                    f"{list(DATASETS)}"
                )
            put("data.dataset", DATASETS[kind])
        elif key == "data_dir":
            args["root"] = str(value)
        elif key == "data_list":
            args["split"] = str(value)
        elif key == "celeba_th":
            args["min_face_area"] = float(value)
        elif key == "center_crop":
            args["center_crop"] = bool(value)
        elif key == "input_size":
            put("data.image_size", _size(value))
        elif key == "batch_size":
            put("data.batch_size", int(value))
        elif key == "random_seed":
            put("seed", int(value))
        elif key == "num_steps":
            put("steps", int(value))
        elif key == "save_pred_every":
            put("checkpoint_every", int(value))
        elif key == "learning_rate":
            put("optim.lr", float(value))
        elif key == "power":
            put("optim.poly_power", float(value))
        elif key == "momentum":  # the original uses it for both optimisers
            put("optim.momentum", float(value))
            put("optim.basis_momentum", float(value))
        elif key == "weight_decay":
            put("optim.weight_decay", float(value))
            put("optim.basis_weight_decay", float(value))
        elif key == "clip_gradients":
            put("optim.grad_clip", float(value))
            put("optim.basis_grad_clip", float(value))
        elif key in ("lambda_con", "lambda_eqv", "lambda_lmeqv", "lambda_sc", "lambda_orthonormal"):
            name = {
                "lambda_con": "concentration",
                "lambda_eqv": "equivariance",
                "lambda_lmeqv": "landmark_equivariance",
                "lambda_sc": "semantic",
                "lambda_orthonormal": "orthonormal",
            }[key]
            put(f"loss.{name}", float(value))
        elif key == "tps_mode":
            put("warp.mode", str(value))
        elif key == "tps_sigma":
            put("warp.sigma", float(value))
        elif key == "eqv_random_mirror":
            put("warp.random_mirror", bool(value))
        elif key == "eqv_border_padding":
            # The original pads only the warped images with the border; logits get zeros.
            put("warp.padding", "border" if value else "zeros")
            put("warp.logits_padding", "zeros")
        elif key in ("random_scale_low", "random_scale_high"):
            pass  # below, as a pair
        elif key in NO_EFFECT:
            if value and NO_EFFECT[key]:
                ignored.append(f"{key} ({NO_EFFECT[key]})")
        else:
            unknown.append(key)
    if "random_scale_low" in data or "random_scale_high" in data:
        # The original's flag defaults: 0.7 and 1.1.
        put(
            "warp.random_scale",
            [float(data.get("random_scale_low", 0.7)), float(data.get("random_scale_high", 1.1))],
        )
    if "split" in args:
        args["split"] = _data_list(args["split"], args.get("root"))
    if args:
        out["data.args"] = args
    if ignored:
        warnings.warn(
            f"{source}: fields with no effect here: {', '.join(ignored)}", UserWarning, stacklevel=3
        )
    if unknown:
        warnings.warn(
            f"{source}: fields the original trainer does not know, ignored: {', '.join(unknown)}",
            UserWarning,
            stacklevel=3,
        )
    return out


def config_from_original(data: dict, source: str = "the experiment file") -> Config:
    """Our config for an original experiment file's contents."""
    from scops_fast.train.config import load_config

    overrides = overrides_from_original(data, source)
    base = load_config("celeba-k8-original")
    args = dict(base.data.args)
    args.update(overrides.pop("data.args", {}))
    overrides["data.args"] = args
    return base.replace(overrides)


__all__ = ["config_from_original", "is_original_experiment", "overrides_from_original"]
