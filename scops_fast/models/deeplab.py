"""DeepLab-v2-style dilated ResNet-50 of SCOPS (SPEC section 8), built on torchvision's
resnet50: output stride 8, a 256x256 input gives 33x33 logits."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from scops_fast.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PartSegmenter,
    freeze_batchnorm_affine,
)
from scops_fast.models.weights import resolve_weights

DEEPLAB_DILATIONS = (6, 12, 18, 24)
RESNET50_CHANNELS = 2048
#: torchvision's ImageNet ResNet-50 files, looked for (never downloaded) in the hub cache.
RESNET50_WEIGHT_FILES = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")


def logits_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the logits for an input of (height, width): conv1 (stride 2),
    ceil-mode max-pool (stride 2), layer2 (stride 2). (H/8 + 1) for H divisible by 8."""

    def down(n: int) -> int:
        n = (n + 2 * 3 - 7) // 2 + 1  # conv1 7x7 stride 2 pad 3
        n = -(-(n + 2 * 1 - 3) // 2) + 1  # max-pool 3x3 stride 2 pad 1, ceil_mode
        return (n + 2 * 1 - 3) // 2 + 1  # layer2's 3x3 stride 2 pad 1

    return down(height), down(width)


class DilatedResNet50(nn.Module):
    """ResNet-50 trunk up to layer4: layer3 and layer4 keep stride 1 with dilation 2
    and 4 in every block, and the max-pool rounds up, as in DeepLab-v2.

    The blocks are torchvision's (ResNet v1.5: the stride sits in the 3x3 conv, not
    in the first 1x1 as in the caffe model DeepLab-v2 started from), because the
    ImageNet weights it can load are for that layout."""

    def __init__(self):
        super().__init__()
        net = torchvision.models.resnet50(
            weights=None, replace_stride_with_dilation=[False, True, True]
        )
        # DeepLab's caffe trunk rounds the pooled size up; with torchvision's 3x3
        # stride-2 conv in layer2 that gives the (H/8 + 1) logits of the original.
        net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        # torchvision gives the first block of a dilated layer the previous layer's
        # dilation; DeepLab-v2 dilates every block of layer3 (2) and layer4 (4).
        for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
            layer[0].conv2.dilation = (dilation, dilation)
            layer[0].conv2.padding = (dilation, dilation)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_torchvision_state_dict(self, state: dict) -> None:
        """Loads a torchvision resnet50 state dict (its `fc` is ignored)."""
        renamed = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            head, _, rest = key.partition(".")
            if head in ("conv1", "bn1"):
                key = f"stem.{0 if head == 'conv1' else 1}.{rest}"
            renamed[key] = value
        missing, unexpected = self.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise ValueError(
                "not a torchvision resnet50 state dict: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )


def deeplab_resnet50(
    num_parts: int,
    *,
    pretrained: str | os.PathLike | None = None,
    head_dilations: Sequence[int] = DEEPLAB_DILATIONS,
    input_mean: Sequence[float] = IMAGENET_MEAN,
    input_std: Sequence[float] = IMAGENET_STD,
    batchnorm: str = "train",
) -> PartSegmenter:
    """SCOPS' segmentation network for K = `num_parts` parts.

    pretrained: None (random init), a path to a torchvision ImageNet resnet50 state
    dict, or "torchvision" to use torchvision's file from the torch hub cache
    (`torch.hub.get_dir()/checkpoints`); nothing is downloaded. BatchNorm affine
    parameters are frozen; BatchNorm itself runs on batch statistics unless
    `batchnorm="eval"`.
    """
    path = None
    if pretrained is not None:
        path = resolve_weights(pretrained, RESNET50_WEIGHT_FILES, "ResNet-50", "model.pretrained")
    trunk = DilatedResNet50()
    if path is not None:
        trunk.load_torchvision_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    freeze_batchnorm_affine(trunk)
    return PartSegmenter(
        trunk,
        RESNET50_CHANNELS,
        num_parts,
        head_dilations,
        input_mean=input_mean,
        input_std=input_std,
        batchnorm=batchnorm,
    )
