"""Training configuration: nested dataclasses, loaded from JSON presets (by name) or
files (by path), validated field by field so a typo fails at start-up with the
field's dotted name instead of hours later.

Presets live in `scops_fast/train/configs/`: `celeba-k8` (SPEC section 8), `cub`,
`demo` (small network on the synthetic data set, a few minutes on a laptop CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from scops_fast._dispatch import CHOICES as BACKEND_CHOICES
from scops_fast.models.checkpointing import ACTIVATION_CHECKPOINTING
from scops_fast.models.common import BATCHNORM_MODES, IMAGENET_MEAN, IMAGENET_STD
from scops_fast.models.deeplab import BLOCK_STRIDES
from scops_fast.models.vgg import FEATURE_KINDS, SCOPS_LAYERS, VGG19_RELU_INDEX
from scops_fast.tps import GRID_SOLVES
from scops_fast.tps import MODES as TPS_MODES

PRESET_DIR = pathlib.Path(__file__).parent / "configs"


#: Fields that are free-form objects: any key may be set in them.
FREE_FORM_FIELDS = ("data.args", "evaluation.train_args", "evaluation.test_args")


class ConfigError(ValueError):
    """A configuration file or field is unreadable or invalid; the message names it."""


def _choices(*values) -> dict:
    return {"choices": tuple(values)}


@dataclass
class ModelConfig:
    #: The segmentation network: DeepLab-v2 on a dilated ResNet-50/101, or a small network for
    #: CPUs.
    arch: str = field(
        default="deeplab_resnet50",
        metadata=_choices("deeplab_resnet50", "deeplab_resnet101", "small"),
    )
    #: K, the number of parts (the network has K+1 output channels: 0 is the background).
    num_parts: int = field(default=8, metadata={"min": 1})
    #: None, a path to a weight file, or "torchvision" (the file in the torch hub cache).
    pretrained: str | None = None
    #: Layout of the `pretrained` file: "torchvision" (an ImageNet ResNet state dict) or
    #: "original" (an original SCOPS snapshot or the caffe DeepLab initialisation it
    #: starts from, `resnet50-caffe-22edcc82.pth` / `resnet101COCO-41f33a49.pth`).
    pretrained_format: str = field(
        default="torchvision", metadata=_choices("torchvision", "original")
    )
    #: Where layer2's first block downsamples: "3x3" (torchvision's ResNet v1.5) or "1x1"
    #: (the caffe ResNet of the original; its weights need it).
    block_stride: str = field(default="3x3", metadata=_choices(*BLOCK_STRIDES))
    #: Quirk of the original: the shortcut projections' BatchNorm scale and shift train
    #: (every other BatchNorm's are frozen).
    train_downsample_bn: bool = False
    #: Channel width of the small network (its last layer has 4x this).
    width: int = field(default=32, metadata={"min": 1})
    #: Dilations of the classifier's parallel 3x3 convolutions; None: the arch's default.
    head_dilations: list[int] | None = None
    #: BatchNorm in training: "train" normalises by the batch's statistics and updates the running
    #: ones; "eval" uses (and freezes) the running statistics.
    batchnorm: str = field(default="train", metadata=_choices(*BATCHNORM_MODES))
    #: Input normalisation `(rgb - mean) / std`, rgb in [0, 1].
    input_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    #: The std of that normalisation.
    input_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    #: Activation checkpointing, for a larger batch or image in the same memory: "none";
    #: "blocks", each residual block (and the classifier) keeps only its input and runs
    #: again in the backward (the least memory, the most recomputation); "stages", the same
    #: a whole ResNet stage at a time (fewer inputs kept, but a stage's activations at once
    #: in the backward; benchmarks/RESULTS.md, "Memory levers"); "selective", the
    #: convolutions' outputs are kept and the backward recomputes BatchNorm, ReLU and sums
    #: from them, a ResNet stage at a time. Changes no number, bit for bit (BatchNorm's
    #: running statistics are updated once per forward, not again by a recomputation), so
    #: a run may be resumed with another setting. Training only: evaluation runs plain.
    activation_checkpointing: str = field(
        default="none", metadata=_choices(*ACTIVATION_CHECKPOINTING)
    )


@dataclass
class DataConfig:
    #: An alias (see scops_fast.train.data.DATASETS) or "package.module:attribute".
    dataset: str = "synthetic"
    #: Keyword arguments of the data set's constructor (besides `size`).
    args: dict = field(default_factory=dict)
    #: Training images are this many pixels square.
    image_size: int = field(default=256, metadata={"min": 8})
    #: Global batch: split evenly over the processes of a distributed run.
    batch_size: int = field(default=6, metadata={"min": 1})
    #: Gradient accumulation, for a batch larger than memory allows: each optimiser step
    #: sums the gradients of `accumulate` micro-batches of batch_size images, each loss
    #: scaled so that the sum is the gradient of the mean over all batch_size x accumulate
    #: images, then clips and steps once. The run sees the data order, warps and jitter of a
    #: run with batch batch_size x accumulate, and equals it up to rounding, except where
    #: BatchNorm uses batch statistics (model.batchnorm "train": statistics over each
    #: micro-batch, and running statistics updated once per micro-batch; the trainer warns).
    #: The step counter, learning-rate schedule, log and checkpoints count optimiser steps.
    accumulate: int = field(default=1, metadata={"min": 1})
    #: DataLoader worker processes reading the images (0: the training process reads them).
    num_workers: int = field(default=0, metadata={"min": 0})
    #: Keep the items' training inputs (img, saliency) in memory after their first use:
    #: later epochs skip decoding or rendering. Costs N x (4 x 4 x H x W) bytes.
    cache: bool = False


@dataclass
class FeaturesConfig:
    #: The frozen features of the semantic loss: ImageNet VGG-19, VGG-19 with random weights
    #: (tests), or hand-made colour and gradient maps (no weights needed).
    kind: str = field(default="vgg19", metadata=_choices(*FEATURE_KINDS))
    #: VGG-19 weights: a path, "torchvision" (hub cache) or None (only for random_vgg19).
    weights: str | None = "torchvision"
    #: VGG-19 layers whose features are concatenated (the paper: relu5_2 and relu5_4).
    layers: list[str] = field(default_factory=lambda: list(SCOPS_LAYERS))
    #: L2-normalise each layer's features per pixel and the basis rows (SPEC section 4).
    normalize: bool = False
    #: Multiply the features by the data set's saliency map.
    saliency: bool = True
    #: Reproduce the original's BGR mean mix-up in the VGG input (SPEC section 8).
    bgr_quirk: bool = False
    #: Seed of the random_vgg19 weights.
    seed: int = 0
    #: Pooling stride of the lowlevel features.
    stride: int = field(default=8, metadata={"min": 1})


@dataclass
class LossConfig:
    #: Weight of the geometric concentration loss.
    concentration: float = 10.0
    #: Weight of the equivariance loss (part maps under the TPS warp).
    equivariance: float = 1e3
    #: Weight of the part centres' equivariance loss.
    landmark_equivariance: float = 1e2
    #: Weight of the semantic consistency loss (features against the part basis).
    semantic: float = 1e4
    #: Weight of the part basis' orthonormality loss.
    orthonormal: float = 0.1
    #: "original": the original's sum over parts and pixels divided by B twice;
    #: "per_image": divided by B once, so the loss does not shrink as the batch grows.
    concentration_reduction: str = field(
        default="original", metadata=_choices("original", "per_image")
    )
    #: "lowres": semantic_consistency_loss_lowres; "full": upsample the features first.
    semantic_form: str = field(default="lowres", metadata=_choices("lowres", "full"))
    #: Loss backend passed as `backend=`; None: the process default.
    backend: str | None = field(default=None, metadata=_choices(*BACKEND_CHOICES))


@dataclass
class WarpConfig:
    #: How RandTPS draws its warps: "affine" (a random similarity of jittered control points) or
    #: "projective".
    mode: str = field(default="affine", metadata=_choices(*TPS_MODES))
    #: Control points are jittered by Uniform(-sigma, sigma) (in [-1, 1] image coordinates).
    sigma: float = field(default=0.01, metadata={"min": 0.0})
    #: The warp's random scale range (low, high); None: no scaling.
    random_scale: list[float] | None = field(default_factory=lambda: [0.7, 2.0])
    #: Also mirror the warped image at random (half the time).
    random_mirror: bool = False
    #: Padding when warping the (normalised, jittered) images.
    padding: str = field(default="zeros", metadata=_choices("zeros", "border"))
    #: Padding when warping the logits. The original always pads them with zeros, even
    #: when its images are warped with border padding (`eqv_border_padding`).
    logits_padding: str = field(default="zeros", metadata=_choices("zeros", "border"))
    #: How the images' warp grid is solved: "float64" (accurate), or "float32" as the
    #: original's TPS, whose grid is off by about 6e-6 (0.01 of an 8-bit level).
    grid_solve: str = field(default="float64", metadata=_choices(*GRID_SOLVES))


@dataclass
class JitterConfig:
    """Colour jitter of the equivariance branch, as torchvision's ColorJitter."""

    #: Brightness factor drawn from [1 - b, 1 + b].
    brightness: float = field(default=0.3, metadata={"min": 0.0})
    #: Contrast factor drawn from [1 - c, 1 + c].
    contrast: float = field(default=0.3, metadata={"min": 0.0})
    #: Saturation factor drawn from [1 - s, 1 + s].
    saturation: float = field(default=0.2, metadata={"min": 0.0})
    #: Hue shift drawn from [-h, h] (a fraction of the colour circle).
    hue: float = field(default=0.2, metadata={"min": 0.0, "max": 0.5})
    #: "tensor": torchvision's tensor ops on the batch, 8-bit levels rounded. "pil": the
    #: original's path, image by image through PIL (8-bit levels truncated, not rounded).
    implementation: str = field(default="tensor", metadata=_choices("tensor", "pil"))
    #: Quirk of the original: the jitter sees colours shifted by its BGR/RGB mean mix-up
    #: (red down, blue up by 18.7 levels, clipped at 0 and 255), shifted back after.
    bgr_quirk: bool = False


@dataclass
class OptimConfig:
    #: The network's base learning rate (SGD), decayed by the poly schedule.
    lr: float = field(default=1e-5, metadata={"min": 0.0})
    #: The classifier head's learning rate is lr times this.
    head_lr_mult: float = 10.0
    #: SGD momentum of the network.
    momentum: float = 0.9
    #: SGD weight decay of the network.
    weight_decay: float = 5e-4
    #: lr * (1 - t/T)^power.
    poly_power: float = 0.9
    #: Clip the network's gradient norm at this (None: no clipping).
    grad_clip: float | None = 5.0
    #: Learning rate of the part basis (constant).
    basis_lr: float = 0.01
    #: SGD momentum of the part basis.
    basis_momentum: float = 0.9
    #: SGD weight decay of the part basis.
    basis_weight_decay: float = 5e-4
    #: Clip the part basis' gradient norm at this (None: no clipping).
    basis_grad_clip: float | None = 5.0
    #: Quirk of the original: its backbone parameter list names each parameter once per
    #: module that contains it, so SGD steps a parameter 1 (conv1), 3 (a block's
    #: convolutions) or 4 times (a shortcut's convolution and BatchNorm) per step.
    nested_param_repeats: bool = False


@dataclass
class EvaluationConfig:
    """Evaluation at the end of training through `scops_fast.eval.evaluate_with_baselines`:
    landmark regression fitted on `train_dataset`, scored with NMI/ARI/IoU on
    `test_dataset` (data set names as in `data.dataset`, built at data.image_size)."""

    #: Evaluate the trained network at the end of the run (metrics.json, the criteria).
    enabled: bool = False
    #: Data set the landmark regression is fitted on (None: no regression).
    train_dataset: str | None = None
    #: Keyword arguments of train_dataset's constructor.
    train_args: dict = field(default_factory=dict)
    #: Data set everything is scored on.
    test_dataset: str = "synthetic"
    #: Keyword arguments of test_dataset's constructor.
    test_args: dict = field(default_factory=dict)
    #: Images per evaluation batch.
    batch_size: int = field(default=16, metadata={"min": 1})
    #: At most this many items of each set (None: all of them).
    limit: int | None = field(default=None, metadata={"min": 1})


@dataclass
class Config:
    #: The run's name (the default output folder is runs/<name>).
    name: str = "scops"
    #: Seed of the weights' initialisation, the data order, the warps and the jitter.
    seed: int = 0
    #: Total steps: the horizon of the learning-rate schedule.
    steps: int = field(default=100_000, metadata={"min": 1})
    #: Where to train: "auto" takes CUDA when torch sees a GPU.
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    #: Compute precision of the segmentation network and the feature extractor, through
    #: torch.autocast on the run's device: "bfloat16", or "float16" with a gradient scaler
    #: (its state is in the checkpoints) against float16's narrow range. Only their forward
    #: and backward run in it: the weights, the part basis, the optimiser state and the
    #: checkpoints stay float32, and the network's output and the features are cast to
    #: float32 before every loss: fed bfloat16, the losses' values and gradients were off by
    #: 2e-3 to 8e-3 (float16: gradients by up to 90 %, underflowed), fed the same values in
    #: float32 only by float32's rounding (docs/training.md, "Large batches and large
    #: images", `precision`). For GPUs and CPUs with native bfloat16/float16 convolutions;
    #: elsewhere torch's fallbacks are about 12x slower than float32 (the trainer warns).
    precision: str = field(default="float32", metadata=_choices("float32", "bfloat16", "float16"))
    #: torch.compile of the segmentation network (in place: checkpoints are unchanged). A
    #: cold compile of the DeepLab step takes minutes on a CPU. None: the device's default
    #: (scops_fast.train.trainer.NETWORK_OPTION_DEFAULTS: off until measured to pay).
    compile: bool | None = None
    #: The networks' weights, and so their activations, in channels-last (NHWC) memory
    #: order. Changes no number beyond rounding. None: the device's default (as compile).
    channels_last: bool | None = None
    #: Memory for `scops-train --batch-size auto` (GiB): the largest batch, with the least
    #: activation checkpointing, whose step fits it (scops_fast.train.autobatch). None: 95%
    #: of the GPU's free memory, or 80% of the memory the OS reports available on CPU.
    memory_budget_gb: float | None = field(default=None, metadata={"min": 0.01})
    #: torch intra-op threads while training (None: torch's default, one per core). On
    #: a CPU shared with other work, 1 is often faster than several threads waiting
    #: on each other.
    threads: int | None = field(default=None, metadata={"min": 1})
    #: On CPU with glibc, return the allocator's free pages to the OS between each
    #: step's forward and backward (malloc_trim): a lower resident peak for a few ms.
    release_heap: bool = True
    #: Log the losses (metrics.jsonl, TensorBoard, a log line) every this many steps.
    log_every: int = field(default=50, metadata={"min": 1})
    #: Save checkpoint.pt every this many steps (and at the end, and on Ctrl-C or SIGTERM
    #: after the step under way).
    checkpoint_every: int = field(default=1000, metadata={"min": 1})
    #: Write the HTML report (part overlays, curves) at the end of training.
    report: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted-name overrides applied, e.g. {"data.batch_size": 2}."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown field {dotted!r}; known: {', '.join(node)}")
                node = node[part]
            if leaf not in node and ".".join(parents) not in FREE_FORM_FIELDS:
                raise ConfigError(f"unknown field {dotted!r}; known: {', '.join(node)}")
            node[leaf] = value
        return config_from_dict(data)


# --------------------------------------------------------------------------- validation
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check_value(name: str, value, tp, meta: dict):
    """Returns `value` converted to `tp` (int -> float only), or raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _check_value(name, value, inner, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected an object, got {value!r}")
        return _build(tp, value, prefix=f"{name}.")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list of {_type_name(item)}, got {value!r}")
        return [_check_value(f"{name}[{i}]", v, item, {}) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        ok = isinstance(value, int | float) if tp is float else isinstance(value, int)
        if isinstance(value, bool) or not ok:
            raise ConfigError(
                f"{name}: expected a{'n' if tp is int else ''} {tp.__name__}, got {value!r}"
            )
        value = tp(value)
        if not math.isfinite(value):  # JSON's NaN and Infinity parse in Python
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{name}: expected at least {meta['min']}, got {value!r}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{name}: expected at most {meta['max']}, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{name}: expected one of {list(meta['choices'])}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {name}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" of {prefix[:-1]}" if prefix else ""
        raise ConfigError(
            f"unknown field {prefix + unknown[0]!r}; known fields{where}: {', '.join(fields)}"
        )
    values = {
        key: _check_value(f"{prefix}{key}", value, hints[key], dict(fields[key].metadata))
        for key, value in data.items()
    }
    return cls(**values)


def _check_semantics(cfg: Config) -> Config:
    """Checks that involve more than one field, or the meaning of a value."""
    for key in ("input_mean", "input_std"):
        if len(getattr(cfg.model, key)) != 3:
            raise ConfigError(f"model.{key}: expected 3 numbers (R, G, B)")
    if any(s <= 0 for s in cfg.model.input_std):
        raise ConfigError("model.input_std: expected positive numbers")
    unknown = [name for name in cfg.features.layers if name not in VGG19_RELU_INDEX]
    if unknown or not cfg.features.layers:
        raise ConfigError(
            f"features.layers: expected names from {sorted(VGG19_RELU_INDEX)}, got "
            f"{cfg.features.layers}"
        )
    if cfg.warp.random_scale is not None:
        scale = cfg.warp.random_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(
                f"warp.random_scale: expected [low, high], 0 < low <= high, got {scale}"
            )
    if cfg.model.head_dilations is not None and (
        not cfg.model.head_dilations or min(cfg.model.head_dilations) < 1
    ):
        raise ConfigError("model.head_dilations: expected a non-empty list of positive integers")
    return cfg


def config_from_dict(data: dict, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level")
    try:
        return _check_semantics(_build(Config, data))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config(
    name_or_path: str | pathlib.Path, overrides: dict[str, Any] | None = None
) -> Config:
    """A preset name (`celeba-k8`, `celeba-k8-original`, `cub`, `demo`) or the path of a
    JSON file: ours (fields left out take the defaults of `Config`, which are SPEC section
    8's) or an experiment file of the original trainer (`exps/*.json`, see
    `scops_fast.train.original_config`)."""
    text = str(name_or_path)
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        if text in preset_names():
            path = PRESET_DIR / f"{text}.json"
        elif text.endswith(".json") or "/" in text:
            raise ConfigError(f"config file {text!r} does not exist")
        else:
            raise ConfigError(
                f"unknown config {text!r}: not a file, nor a preset ({', '.join(preset_names())})"
            )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read config file {str(path)!r}: {reason}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    from scops_fast.train.original_config import config_from_original, is_original_experiment

    if is_original_experiment(data):
        cfg = config_from_original(data, source=f"original experiment file {str(path)!r}")
    else:
        cfg = config_from_dict(data, source=f"config {str(path)!r}")
    return cfg.replace(overrides) if overrides else cfg


def dotted_value(tree: dict, dotted: str):
    """The value at a dotted name (e.g. "data.batch_size") of a config's to_dict()."""
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """`dotted.name=value`, the value parsed as JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected dotted.name=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
