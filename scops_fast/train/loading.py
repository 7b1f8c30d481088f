"""Building the segmentation network from a config, and using a trained one."""

from __future__ import annotations

import os
import pathlib

import torch
import torch.nn.functional as F

from scops_fast.models import PartSegmenter, deeplab_resnet, small_net
from scops_fast.models.original import load_original_weights
from scops_fast.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from scops_fast.train.config import ConfigError, ModelConfig, config_from_dict


def build_network(cfg: ModelConfig, *, load_pretrained: bool = True) -> PartSegmenter:
    common = {
        "input_mean": cfg.input_mean,
        "input_std": cfg.input_std,
        "batchnorm": cfg.batchnorm,
        "activation_checkpointing": cfg.activation_checkpointing,
    }
    if cfg.head_dilations is not None:
        common["head_dilations"] = cfg.head_dilations
    if cfg.arch.startswith("deeplab_resnet"):
        depth = int(cfg.arch.removeprefix("deeplab_resnet"))
        pretrained = cfg.pretrained if load_pretrained else None
        original = cfg.pretrained_format == "original"
        if pretrained is not None and _is_run_checkpoint(pretrained):
            raise ConfigError(
                f"model.pretrained: {pretrained} is a scops_fast run's checkpoint, not ImageNet "
                "ResNet weights: continue that run with scops-train --out ITS_FOLDER --resume; "
                "a new run cannot start from another run's weights"
            )
        try:
            net = deeplab_resnet(
                cfg.num_parts,
                depth=depth,
                pretrained=None if original else pretrained,
                block_stride=cfg.block_stride,
                train_downsample_bn=cfg.train_downsample_bn,
                **common,
            )
            if original and pretrained is not None:
                load_original_weights(net, pretrained)
        except ValueError as exc:  # weights of another network: the loader names the keys
            raise ConfigError(f"model.pretrained: {exc}") from None
        return net
    if cfg.arch == "small":
        if cfg.pretrained is not None:
            # It would otherwise train from scratch without a word.
            raise ConfigError(
                f"model.pretrained: the small network has no pretrained weights to start "
                f"from (got {cfg.pretrained!r}); leave it null, or use model.arch "
                "deeplab_resnet50 / deeplab_resnet101 with ImageNet ResNet weights"
            )
        return small_net(cfg.num_parts, width=cfg.width, **common)
    raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")


def _is_run_checkpoint(path) -> bool:
    """Whether `path` (a file, or a folder holding checkpoint.pt) is one of our runs."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, or one weights_only refuses: not ours either
        return False
    return isinstance(data, dict) and {"format", "config", "model"} <= set(data)


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Low-resolution logits to the input size, as before every loss (SPEC section 8)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def load_model(checkpoint_path: str | os.PathLike, map_location="cpu") -> PartSegmenter:
    """The trained segmentation network of a checkpoint (a file, or a run directory
    holding checkpoint.pt), rebuilt from the checkpoint's config, in eval mode.
    Pretrained backbone weights are not needed: the checkpoint has all weights.
    `model.image_size` is the (square) image size it was trained at, which
    `predict_parts` resizes its inputs to; `model.resize` how a folder run brought its
    photos to that square ("squash", "letterbox" or "crop", see `ImageFolder`)."""
    ckpt = load_checkpoint(checkpoint_path, map_location=map_location)
    cfg = config_from_dict(ckpt["config"], source=f"checkpoint {str(checkpoint_path)!r}")
    net = build_network(cfg.model, load_pretrained=False)
    net.load_state_dict(ckpt["model"])
    net.image_size = cfg.data.image_size
    net.resize = _trained_resize(cfg)
    return net.to(map_location if isinstance(map_location, str | torch.device) else "cpu").eval()


def _trained_resize(cfg) -> str:
    from scops_fast.train.data import DATASETS

    if DATASETS.get(cfg.data.dataset, cfg.data.dataset) != DATASETS["folder"]:
        return "squash"
    return cfg.data.args.get("resize", "squash")


#: The input size an original SCOPS snapshot is run at: its evaluation's.
ORIGINAL_IMAGE_SIZE = 256


def load_any_model(checkpoint_path, map_location="cpu") -> tuple[PartSegmenter, str]:
    """(network in eval mode, "original" or "scops_fast"): a run of ours (checkpoint.pt or
    its folder, as `load_model`) or a snapshot of the original SCOPS trainer (read with
    weights_only, run at ORIGINAL_IMAGE_SIZE)."""
    from scops_fast.models import load_original
    from scops_fast.models.original import original_snapshot

    state = original_snapshot(checkpoint_path)
    if state is None:
        return load_model(checkpoint_path, map_location=map_location), "scops_fast"
    net = load_original(state).to(map_location)
    net.image_size = ORIGINAL_IMAGE_SIZE
    return net, "original"


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


@torch.no_grad()
def predict_parts(model: PartSegmenter, images: torch.Tensor, size=None) -> torch.Tensor:
    """Part probabilities (B, K+1, H, W) at the input's resolution for images
    (B, 3, H, W) in [0, 1] of any size; channel 0 is background.

    The network sees the images resized (bilinear, antialiased) to `size` (int or
    (h, w)): by default `model.image_size`, the size it was trained at (set by
    `load_model` and the trainer; a model without it sees the images as they are),
    since a network trained at one scale segments another scale worse. As in
    training, the logits are upsampled to that size (bilinear, align_corners=True);
    then they are resized to the input's size (bilinear, the inverse of the image
    resize) and the softmax is taken. A model trained on photos letterboxed or cropped
    to the square (`model.resize`) sees them letterboxed (undistorted, black bars), and
    the bars are cut from its output. Runs in the model's current mode (`load_model`
    returns it in eval mode)."""
    param = _first_parameter(model)
    _check_images(images, param.device)
    images = images.to(device=param.device, dtype=param.dtype)
    in_size = tuple(images.shape[-2:])
    net_size = network_size(model, in_size, size)
    net_images, box = framed_input(images, net_size, letterboxed(model))
    return probabilities_from(network_logits(model, net_images), in_size, box)


def letterboxed(model) -> bool:
    """Whether `model` sees photos letterboxed: it was trained on letterboxed or cropped
    ones, which keep the object's proportions."""
    return getattr(model, "resize", "squash") in ("letterbox", "crop")


def framed_input(images: torch.Tensor, net_size, letterbox: bool):
    """(network input, box): images (B, 3, H, W) resized to net_size, squashed, or
    letterboxed into `box` (x0, y0, x1, y1) in image pixels, reaching outside the image
    where the bars are (None when squashed)."""
    if not letterbox:
        return network_input(images, net_size), None
    from scops_fast.data.folder import resize_box

    h, w = images.shape[-2:]
    box = resize_box((w, h), tuple(net_size), "letterbox")
    x0, y0, x1, y1 = box
    padded = F.pad(images, (-x0, x1 - w, -y0, y1 - h))  # black bars, as in training
    return network_input(padded, net_size), box


def probabilities_from(logits: torch.Tensor, size, box=None) -> torch.Tensor:
    """Part probabilities at the image's `size` from the network's logits: resized back
    (and, letterboxed, the bars cut off), then the softmax."""
    if box is None:
        return probabilities_at(logits, size)
    x0, y0, x1, y1 = box
    h, w = size
    logits = F.interpolate(logits, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
    return torch.softmax(logits[..., -y0 : -y0 + h, -x0 : -x0 + w], dim=1)


def network_size(model, in_size, size=None) -> tuple[int, int]:
    """The (h, w) the network sees an image of in_size at: `size`, else the model's
    `image_size`, else in_size."""
    if size is None:
        size = getattr(model, "image_size", None) or in_size
    return _pair(size)


def network_input(images: torch.Tensor, net_size) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] resized (bilinear, antialiased) to net_size."""
    if tuple(images.shape[-2:]) == tuple(net_size):
        return images
    return F.interpolate(
        images, size=tuple(net_size), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0.0, 1.0)


def network_logits(model, net_images: torch.Tensor) -> torch.Tensor:
    """The model's logits upsampled to its input's size, as in training."""
    return upsample_logits(model(model.normalize(net_images)), net_images.shape[-2:])


def probabilities_at(logits: torch.Tensor, size) -> torch.Tensor:
    """Softmax of logits (B, K+1, h, w) resized (bilinear) to `size` first."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return torch.softmax(logits, dim=1)


def _first_parameter(model) -> torch.Tensor:
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "normalize", None)):
        raise TypeError(
            "model: expected a segmentation network (a PartSegmenter, e.g. from load_model), "
            f"got {type(model).__name__}"
        )
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("model: expected a network with parameters, got one without any")
    return param


def _check_images(images, model_device: torch.device) -> None:
    if not torch.is_tensor(images):
        raise TypeError(
            f"images: expected a torch.Tensor (B, 3, H, W), got {type(images).__name__}"
        )
    if images.layout != torch.strided or images.is_nested:
        raise TypeError(f"images: expected a dense (strided) tensor, got layout {images.layout}")
    if not images.is_floating_point():
        raise TypeError(
            f"images: expected a floating-point tensor with values in [0, 1], got dtype "
            f"{images.dtype}"
            + (" (divide 8-bit images by 255)" if images.dtype == torch.uint8 else "")
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(
            f"images: expected a non-empty (B, 3, H, W) tensor, got {tuple(images.shape)}"
        )
    if images.device.type == "meta" and model_device.type != "meta":
        raise ValueError(
            f"images: expected a tensor with data (the model is on {model_device}), "
            "got a meta tensor"
        )
