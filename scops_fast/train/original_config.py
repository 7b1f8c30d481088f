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


#: Flags that map one to one: flag -> (our field or fields, type).
DIRECT = {
    "exp_name": ("name", str),
    "num_parts": ("model.num_parts", int),
    "learning_rate_w": ("optim.basis_lr", float),
    "ref_norm": ("features.normalize", bool),
    "num_workers": ("data.num_workers", int),
    "input_size": ("data.image_size", None),  # "H,W": see _size
    "batch_size": ("data.batch_size", int),
    "random_seed": ("seed", int),
    "num_steps": ("steps", int),
    "save_pred_every": ("checkpoint_every", int),
    "learning_rate": ("optim.lr", float),
    "power": ("optim.poly_power", float),
    # The original uses these for both of its optimisers.
    "momentum": (("optim.momentum", "optim.basis_momentum"), float),
    "weight_decay": (("optim.weight_decay", "optim.basis_weight_decay"), float),
    "clip_gradients": (("optim.grad_clip", "optim.basis_grad_clip"), float),
    "lambda_con": ("loss.concentration", float),
    "lambda_eqv": ("loss.equivariance", float),
    "lambda_lmeqv": ("loss.landmark_equivariance", float),
    "lambda_sc": ("loss.semantic", float),
    "lambda_orthonormal": ("loss.orthonormal", float),
    "tps_mode": ("warp.mode", str),
    "tps_sigma": ("warp.sigma", float),
    "eqv_random_mirror": ("warp.random_mirror", bool),
}
#: Flags that become arguments of the data set: flag -> (argument, type).
DATA_ARGS = {
    "data_dir": ("root", str),
    "data_list": ("split", str),
    "celeba_th": ("min_face_area", float),
    "center_crop": ("center_crop", bool),
}


def overrides_from_original(data: dict, source: str = "the experiment file") -> dict[str, Any]:
    """Dotted overrides of `celeba-k8-original` for an original experiment dict."""
    out: dict[str, Any] = {}
    ignored, unknown = [], []
    args: dict[str, Any] = {}
    for key, value in data.items():
        if key in DIRECT:
            fields, kind = DIRECT[key]
            for name in (fields,) if isinstance(fields, str) else fields:
                out[name] = _size(value) if kind is None else kind(value)
        elif key in DATA_ARGS:
            name, kind = DATA_ARGS[key]
            args[name] = kind(value)
        elif key == "model":
            if value not in ARCHS:
                raise ConfigError(
                    f"{source}: model {value!r} is not supported; expected one of {list(ARCHS)}"
                )
            out["model.arch"] = ARCHS[value]
        elif key == "restore_from":
            # null: the original's own initialisation, looked for in the torch hub cache.
            pretrained = {None: "torchvision", "": "torchvision", "None": None}
            out["model.pretrained"] = pretrained.get(value, str(value))
        elif key == "restore_part_basis":
            if value:
                raise ConfigError(f"{source}: restore_part_basis is not supported")
        elif key == "ref_net":
            if value != "vgg19":
                raise ConfigError(f"{source}: ref_net {value!r}: only 'vgg19' is supported")
            out["features.kind"] = "vgg19"
        elif key == "ref_layer":
            out["features.layers"] = [s for s in str(value).split(",") if s] or ["relu5_4"]
        elif key == "no_sal_masking":
            out["features.saliency"] = not value
        elif key == "dataset":
            kind = str(value).split("_")[0]
            if kind not in DATASETS:
                raise ConfigError(
                    f"{source}: dataset {value!r} is not supported; expected one of "
                    f"{list(DATASETS)}"
                )
            out["data.dataset"] = DATASETS[kind]
        elif key == "eqv_border_padding":
            # The original pads only the warped images with the border; logits get zeros.
            out["warp.padding"] = "border" if value else "zeros"
            out["warp.logits_padding"] = "zeros"
        elif key in ("random_scale_low", "random_scale_high"):
            pass  # below, as a pair
        elif key in NO_EFFECT:
            if value:
                ignored.append(f"{key} ({NO_EFFECT[key]})")
        else:
            unknown.append(key)
    if "random_scale_low" in data or "random_scale_high" in data:
        # The original's flag defaults: 0.7 and 1.1.
        low, high = data.get("random_scale_low", 0.7), data.get("random_scale_high", 1.1)
        out["warp.random_scale"] = [float(low), float(high)]
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
