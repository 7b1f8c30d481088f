"""Building the segmentation network from a config, and using a trained one."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from scops_fast.models import PartSegmenter, deeplab_resnet50, small_net
from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.config import ModelConfig, config_from_dict


def build_network(cfg: ModelConfig, *, load_pretrained: bool = True) -> PartSegmenter:
    common = {
        "input_mean": cfg.input_mean,
        "input_std": cfg.input_std,
        "batchnorm": cfg.batchnorm,
    }
    if cfg.head_dilations is not None:
        common["head_dilations"] = cfg.head_dilations
    if cfg.arch == "deeplab_resnet50":
        pretrained = cfg.pretrained if load_pretrained else None
        return deeplab_resnet50(cfg.num_parts, pretrained=pretrained, **common)
    if cfg.arch == "small":
        return small_net(cfg.num_parts, width=cfg.width, **common)
    raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Low-resolution logits to the input size, as before every loss (SPEC section 8)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def load_model(checkpoint_path: str | os.PathLike, map_location="cpu") -> PartSegmenter:
    """The trained segmentation network of a checkpoint (a file, or a run directory
    holding checkpoint.pt), rebuilt from the checkpoint's config, in eval mode.
    Pretrained backbone weights are not needed: the checkpoint has all weights."""
    ckpt = load_checkpoint(checkpoint_path, map_location=map_location)
    cfg = config_from_dict(ckpt["config"], source=f"checkpoint {str(checkpoint_path)!r}")
    net = build_network(cfg.model, load_pretrained=False)
    net.load_state_dict(ckpt["model"])
    return net.to(map_location if isinstance(map_location, str | torch.device) else "cpu").eval()


@torch.no_grad()
def predict_parts(model: PartSegmenter, images: torch.Tensor) -> torch.Tensor:
    """Part probabilities (B, K+1, H, W) for images (B, 3, H, W) in [0, 1]; channel 0
    is background. Applies the training normalisation, upsamples the logits to the
    input size (bilinear, align_corners=True), then takes the softmax. Runs in the
    model's current mode (`load_model` returns it in eval mode)."""
    param = _first_parameter(model)
    _check_images(images, param.device)
    images = images.to(device=param.device, dtype=param.dtype)
    logits = model(model.normalize(images))
    return torch.softmax(upsample_logits(logits, images.shape[-2:]), dim=1)


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
