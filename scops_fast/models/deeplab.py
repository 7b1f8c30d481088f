"""DeepLab-v2-style dilated ResNet-50 and ResNet-101 of SCOPS (SPEC section 8), built on
torchvision's ResNets: output stride 8, a 256x256 input gives 33x33 logits."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from scops_fast.models import checkpointing
from scops_fast.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PartSegmenter,
    freeze_batchnorm_affine,
)
from scops_fast.models.weights import load_tensor_file, resolve_weights

DEEPLAB_DILATIONS = (6, 12, 18, 24)
RESNET_CHANNELS = 2048
#: torchvision's ImageNet ResNet files, looked for (never downloaded) in the hub cache.
RESNET_WEIGHT_FILES = {
    50: ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    101: ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}
DEPTHS = tuple(RESNET_WEIGHT_FILES)
#: Where the first block of a strided stage downsamples: torchvision's ResNet v1.5 in its
#: 3x3 convolution, the caffe ResNet (DeepLab's, the original SCOPS') in its first 1x1.
BLOCK_STRIDES = ("3x3", "1x1")


def logits_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the logits for an input of (height, width): conv1 (stride 2),
    ceil-mode max-pool (stride 2), layer2 (stride 2). (H/8 + 1) for H divisible by 8."""

    def down(n: int) -> int:
        n = (n + 2 * 3 - 7) // 2 + 1  # conv1 7x7 stride 2 pad 3
        n = -(-(n + 2 * 1 - 3) // 2) + 1  # max-pool 3x3 stride 2 pad 1, ceil_mode
        return (n + 2 * 1 - 3) // 2 + 1  # layer2's 3x3 stride 2 pad 1

    return down(height), down(width)


class DilatedResNet(nn.Module):
    """ResNet-50 or -101 trunk up to layer4: layer3 and layer4 keep stride 1 with
    dilation 2 and 4 in every block, and the max-pool rounds up, as in DeepLab-v2.

    The blocks are torchvision's, whose state dict names match the original's. With
    `block_stride="3x3"` (ResNet v1.5, for torchvision's ImageNet weights) layer2's
    first block downsamples in its 3x3 convolution; with `"1x1"` in its first 1x1
    convolution, as the caffe ResNet the original SCOPS was initialised from and
    trained (`scops_fast.models.original` loads its files).

    `activation_checkpointing` applies to layer1 to layer4, the stem excepted: block by
    block, or layer by layer for "selective" (see `scops_fast.models.checkpointing`)."""

    activation_checkpointing = "none"

    def __init__(self, depth: int = 50, block_stride: str = "3x3"):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth: expected one of {list(DEPTHS)}, got {depth!r}")
        if block_stride not in BLOCK_STRIDES:
            raise ValueError(
                f"block_stride: expected one of {list(BLOCK_STRIDES)}, got {block_stride!r}"
            )
        build = torchvision.models.resnet50 if depth == 50 else torchvision.models.resnet101
        net = build(weights=None, replace_stride_with_dilation=[False, True, True])
        # DeepLab's caffe trunk rounds the pooled size up, which gives the (H/8 + 1)
        # logits of the original (either stride placement gives the same sizes).
        net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        # torchvision gives the first block of a dilated layer the previous layer's
        # dilation; DeepLab-v2 dilates every block of layer3 (2) and layer4 (4).
        for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
            layer[0].conv2.dilation = (dilation, dilation)
            layer[0].conv2.padding = (dilation, dilation)
        if block_stride == "1x1":
            net.layer2[0].conv1.stride = (2, 2)
            net.layer2[0].conv2.stride = (1, 1)
        self.depth, self.block_stride = depth, block_stride
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def downsample_batchnorms(self) -> list[nn.Module]:
        """The BatchNorm of each stage's shortcut projection."""
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [layer[0].downsample[1] for layer in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return checkpointing.run_stages(layers, x, self.activation_checkpointing)

    def load_torchvision_state_dict(self, state: dict) -> None:
        """Loads a torchvision ResNet state dict of the same depth (its `fc` is ignored)."""
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
                f"not a torchvision resnet{self.depth} state dict: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )


def deeplab_resnet(
    num_parts: int,
    *,
    depth: int = 50,
    pretrained: str | os.PathLike | None = None,
    head_dilations: Sequence[int] = DEEPLAB_DILATIONS,
    input_mean: Sequence[float] = IMAGENET_MEAN,
    input_std: Sequence[float] = IMAGENET_STD,
    batchnorm: str = "train",
    block_stride: str = "3x3",
    train_downsample_bn: bool = False,
    activation_checkpointing: str = "none",
) -> PartSegmenter:
    """SCOPS' segmentation network for K = `num_parts` parts on a ResNet of `depth` 50
    or 101.

    pretrained: None (random init), a path to a torchvision ImageNet ResNet state dict,
    or "torchvision" to use torchvision's file from the torch hub cache
    (`torch.hub.get_dir()/checkpoints`); nothing is downloaded. (Original SCOPS and
    caffe DeepLab files: `scops_fast.models.load_original`.) BatchNorm affine
    parameters are frozen, except those of the shortcut projections' BatchNorms when
    `train_downsample_bn` (the original's quirk); BatchNorm itself runs on batch
    statistics unless `batchnorm="eval"`. activation_checkpointing: "none", "blocks"
    or "selective" (`scops_fast.models.checkpointing`).
    """
    path = None
    if pretrained is not None:
        path = resolve_weights(
            pretrained, RESNET_WEIGHT_FILES[depth], f"ResNet-{depth}", "model.pretrained"
        )
    trunk = DilatedResNet(depth, block_stride)
    if path is not None:
        trunk.load_torchvision_state_dict(load_tensor_file(path, f"ResNet-{depth} weights"))
    freeze_batchnorm_affine(trunk)
    if train_downsample_bn:
        for bn in trunk.downsample_batchnorms():
            bn.weight.requires_grad_(True)
            bn.bias.requires_grad_(True)
    return PartSegmenter(
        trunk,
        RESNET_CHANNELS,
        num_parts,
        head_dilations,
        input_mean=input_mean,
        input_std=input_std,
        batchnorm=batchnorm,
        activation_checkpointing=activation_checkpointing,
    )


def deeplab_resnet50(num_parts: int, **kwargs) -> PartSegmenter:
    """`deeplab_resnet` with depth 50 (the network of the CelebA experiment)."""
    return deeplab_resnet(num_parts, depth=50, **kwargs)


def deeplab_resnet101(num_parts: int, **kwargs) -> PartSegmenter:
    """`deeplab_resnet` with depth 101 (the original's `DeepLab_2branch`)."""
    return deeplab_resnet(num_parts, depth=101, **kwargs)
