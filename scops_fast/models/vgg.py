"""Frozen feature extractors for the semantic-consistency loss (SPEC section 4).

`vgg19` is SCOPS' choice: ImageNet VGG-19 relu5_2 and relu5_4 (512 channels each,
stride 16). Its weights are read from disk only (never downloaded): a path, or
torchvision's `vgg19-dcbb9e9d.pth` in the torch hub cache.

Without those weights, two stand-ins keep the pipeline runnable, at a cost:

- `random_vgg19`: the same network with a fixed, seeded random initialisation.
  Random deep features mostly encode local colour and edge statistics, so the
  semantic loss degrades to "parts are regions of similar low-level appearance": it
  still groups pixels, but it no longer ties, e.g., left and right eyes to one
  semantic part across identities, poses and lighting. It also costs the full VGG-19
  forward pass (about 6.5 GFLOP per 128x128 image).
- `lowlevel`: hand-made colour and texture maps (RGB, opponent colour, gradient
  energy at two scales), average-pooled to stride 8. Nearly free, and on images
  whose parts differ by colour or texture (the synthetic data set) it is what a
  random network would give anyway. On real photographs it has the same limits as
  `random_vgg19`, more strongly: parts follow colour regions (skin, hair,
  background) rather than semantics, and lighting changes move part boundaries.

The paper's landmark errors are measured with ImageNet VGG features; expect
noticeably worse landmark regression with either stand-in on real data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from scops_fast.models.common import CAFFE_MEAN_RGB, IMAGENET_MEAN, IMAGENET_STD
from scops_fast.models.weights import (
    HUB_CACHE,
    WeightsFileError,
    load_tensor_file,
    resolve_weights,
)

VGG19_WEIGHT_FILES = ("vgg19-dcbb9e9d.pth",)
#: Index in `torchvision.models.vgg19().features` of the ReLU after each named conv.
VGG19_RELU_INDEX = {"relu5_2": 31, "relu5_4": 35, "relu4_2": 22, "relu4_4": 26}
SCOPS_LAYERS = ("relu5_2", "relu5_4")
#: The original's BGR/RGB mean mix-up (SPEC section 8), in [0, 1] units: it adds the
#: BGR-ordered caffe mean back to RGB images, so red loses and blue gains this much.
BGR_QUIRK_SHIFT = (CAFFE_MEAN_RGB[0] - CAFFE_MEAN_RGB[2]) / 255.0

FEATURE_KINDS = ("vgg19", "random_vgg19", "lowlevel")


class FrozenExtractor(nn.Module):
    """A feature extractor that never trains: parameters without gradients and
    eval mode whatever `train()` says."""

    def freeze(self):
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True):
        return super().train(False)


class VGG19Features(FrozenExtractor):
    """VGG-19 activations at `layers` for [0, 1] RGB images; a list of maps (B, 512,
    H/16, W/16), computed without gradients.

    weights: a path to torchvision's ImageNet state dict, "torchvision" for the copy
    in the torch hub cache, or None together with `random_init_seed` for a fixed
    random network (see the module docstring for what that costs).
    `bgr_quirk=True` reproduces the original's colour shift of the VGG input.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = HUB_CACHE,
        layers: Sequence[str] = SCOPS_LAYERS,
        *,
        random_init_seed: int | None = None,
        bgr_quirk: bool = False,
    ):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_RELU_INDEX]
        if unknown or not layers:
            raise ValueError(
                f"layers: expected names from {sorted(VGG19_RELU_INDEX)}, got {list(layers)}"
            )
        if weights is None and random_init_seed is None:
            raise ValueError(
                "VGG-19 features need ImageNet weights: set features.weights to the path of "
                f"torchvision's {VGG19_WEIGHT_FILES[0]} or to {HUB_CACHE!r} with the file in "
                f"the torch hub cache; or choose features.kind 'random_vgg19' or 'lowlevel'"
            )
        path = None
        if weights is not None:
            path = resolve_weights(weights, VGG19_WEIGHT_FILES, "VGG-19", "features.weights")
        # Only the convolutional part: the classifier is 120M parameters we never use.
        features = _vgg19_convolutions()
        if path is not None:
            state = load_tensor_file(path, "VGG-19 weights")
            features.load_state_dict(_features_part(state, path))
        else:
            # Re-draw every weight from a private generator, so the "random" network is
            # the same on every machine and rank whatever the global RNG did before.
            gen = torch.Generator().manual_seed(int(random_init_seed))
            for m in features:
                if isinstance(m, nn.Conv2d):
                    fan_out = m.out_channels * 9
                    with torch.no_grad():
                        m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
                        m.bias.zero_()
        self.layer_names = tuple(layers)
        self.taps = tuple(VGG19_RELU_INDEX[name] for name in layers)
        self.body = features[: max(self.taps) + 1]
        for m in self.body:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # a tapped activation must survive the next layer
        self.bgr_quirk = bool(bgr_quirk)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.freeze()

    @property
    def channels(self) -> int:
        return 512 * len(self.taps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images
        if self.bgr_quirk:
            # Made in the images' dtype: rounded to float32 first, it moved float64 features.
            shift = torch.tensor(
                [-BGR_QUIRK_SHIFT, 0.0, BGR_QUIRK_SHIFT], dtype=x.dtype, device=x.device
            )
            x = x + shift.view(1, 3, 1, 1)
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def _vgg19_convolutions() -> nn.Sequential:
    """torchvision's `vgg19().features`, built without the classifier."""
    vgg = torchvision.models.vgg
    if hasattr(vgg, "make_layers") and "E" in getattr(vgg, "cfgs", {}):
        return vgg.make_layers(vgg.cfgs["E"], batch_norm=False)
    return torchvision.models.vgg19(weights=None).features


def _features_part(state: dict, path) -> dict:
    """The `features.*` entries of a torchvision VGG-19 state dict, renamed."""
    part = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not part:
        raise WeightsFileError(
            f"{str(path)!r} is not a torchvision VGG-19 state dict (no features.*)"
        )
    return part


class LowLevelFeatures(FrozenExtractor):
    """Non-negative colour and texture maps at 1/`stride` resolution: RGB, the two
    opponent-colour axes split into positive and negative halves, and gradient
    energy |dx|, |dy| of the grey image at two scales: 11 channels. See the module
    docstring for what it costs in quality."""

    channels = 11

    def __init__(self, stride: int = 8):
        super().__init__()
        self.stride = int(stride)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        r, g, b = images.unbind(1)
        red_green = r - g
        yellow_blue = 0.5 * (r + g) - b
        colour = torch.stack((r, g, b, red_green.clamp_min(0), (-red_green).clamp_min(0)), 1)
        colour = torch.cat(
            (colour, torch.stack((yellow_blue.clamp_min(0), (-yellow_blue).clamp_min(0)), 1)), 1
        )
        grey = images.mean(1, keepdim=True)
        texture = [_gradient_energy(grey), _gradient_energy(F.avg_pool2d(grey, 2))]
        texture[1] = F.interpolate(texture[1], size=grey.shape[-2:], mode="nearest")
        maps = torch.cat((colour, *texture), 1)
        return [F.avg_pool2d(maps, self.stride, ceil_mode=True)]


def _gradient_energy(grey: torch.Tensor) -> torch.Tensor:
    dx = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1, 0, 0))
    dy = F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(), (0, 0, 0, 1))
    return torch.cat((dx, dy), 1)


def build_features(
    kind: str,
    *,
    weights: str | os.PathLike | None = HUB_CACHE,
    layers: Sequence[str] = SCOPS_LAYERS,
    seed: int = 0,
    bgr_quirk: bool = False,
    stride: int = 8,
) -> FrozenExtractor:
    """The frozen extractor named `kind` (one of FEATURE_KINDS)."""
    if kind == "vgg19":
        return VGG19Features(weights, layers, bgr_quirk=bgr_quirk)
    if kind == "random_vgg19":
        return VGG19Features(None, layers, random_init_seed=seed, bgr_quirk=bgr_quirk)
    if kind == "lowlevel":
        return LowLevelFeatures(stride)
    raise ValueError(f"features.kind: expected one of {list(FEATURE_KINDS)}, got {kind!r}")
