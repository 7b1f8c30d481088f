"""Pieces shared by the part-segmentation networks: the two-branch head, the input
normalisation, BatchNorm handling and the `PartSegmenter` wrapper that every
backbone plugs into."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from scops_fast.models import checkpointing

#: ImageNet statistics of torchvision's pretrained weights, in [0, 1] units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The caffe ImageNet mean of the original SCOPS network's input, RGB order, 0-255 units.
CAFFE_MEAN_RGB = (122.67891434, 116.66876762, 104.00698793)

BATCHNORM_MODES = ("train", "eval")


class DilatedSumClassifier(nn.Module):
    """DeepLab-v2's classifier: parallel 3x3 convolutions with growing dilation, each
    with its own bias, summed (SPEC section 8)."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            # DeepLab leaves biases at PyTorch's default init; so do we, so that the
            # initial logits are not all equal and the parts start distinct.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class TwoBranchHead(nn.Module):
    """Splits the backbone's channels in two halves. The second half feeds the
    classifier that gives the K+1 part logits. The first half is the appearance
    branch: SCOPS' losses never read it, so it has no layers of its own here and is
    only returned on request (`PartSegmenter(x, return_appearance=True)`), e.g. for
    part descriptors; its channels still shape the backbone through the residual
    path of the last block."""

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int]):
        super().__init__()
        if in_channels % 2:
            raise ValueError(f"in_channels: expected an even number, got {in_channels}")
        self.split = in_channels // 2
        self.classifier = DilatedSumClassifier(in_channels - self.split, num_classes, dilations)
        self.activation_checkpointing = "none"

    def forward(self, feats: torch.Tensor):
        appearance, part_branch = feats[:, : self.split], feats[:, self.split :]
        logits = checkpointing.run(self.classifier, part_branch, self.activation_checkpointing)
        return logits, appearance


def freeze_batchnorm_affine(module: nn.Module) -> None:
    """DeepLab fine-tunes with the ImageNet BatchNorm scale and shift kept fixed."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)


class PartSegmenter(nn.Module):
    """backbone -> two-branch head -> part logits (B, K+1, h, w) at the backbone's low
    resolution, channel 0 background.

    `forward` takes normalised images; `normalize` maps [0, 1] RGB images to that
    space with the statistics stored as buffers, so a checkpoint carries its own
    preprocessing. `batchnorm="eval"` keeps BatchNorm on its running statistics even
    in `train()` mode (batch-size independent; used to compare distributed and
    single-process runs). `activation_checkpointing` ("none", "blocks", "selective";
    settable later) trades the backward's kept activations for recomputation, see
    `scops_fast.models.checkpointing`; the backbone must support it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_channels: int,
        num_parts: int,
        head_dilations: Sequence[int],
        *,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        batchnorm: str = "train",
        activation_checkpointing: str = "none",
    ):
        super().__init__()
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm: expected one of {BATCHNORM_MODES}, got {batchnorm!r}")
        self.num_parts = int(num_parts)
        self.batchnorm = batchnorm
        self.backbone = backbone
        self.head = TwoBranchHead(backbone_channels, self.num_parts + 1, head_dilations)
        self.register_buffer("input_mean", torch.tensor(input_mean).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(input_std).view(1, 3, 1, 1))
        self.activation_checkpointing = activation_checkpointing

    @property
    def activation_checkpointing(self) -> str:
        return self.head.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, mode: str) -> None:
        checkpointing.check_mode(mode)
        # A backbone supports it by reading its own `activation_checkpointing` in forward.
        if mode != "none" and not hasattr(self.backbone, "activation_checkpointing"):
            raise ValueError(
                f"activation_checkpointing: the backbone {type(self.backbone).__name__} "
                "does not support it"
            )
        self.backbone.activation_checkpointing = mode
        self.head.activation_checkpointing = mode

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor, return_appearance: bool = False):
        logits, appearance = self.head(self.backbone(x))
        return (logits, appearance) if return_appearance else logits

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.batchnorm == "eval":
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable classifier parameters (10x learning rate in SCOPS)."""
        return (p for p in self.head.parameters() if p.requires_grad)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.backbone.parameters() if p.requires_grad)
