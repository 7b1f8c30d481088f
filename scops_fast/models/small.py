"""A small dilated CNN with the same interface as the DeepLab network, for CPU runs
(the demo, tests): output stride 4, trained from scratch."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from scops_fast.models import checkpointing
from scops_fast.models.common import IMAGENET_MEAN, IMAGENET_STD, PartSegmenter

SMALL_HEAD_DILATIONS = (1, 2, 4, 8)


def _conv_bn_relu(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallDilatedNet(nn.Module):
    """Two stride-2 convolutions, then dilated ones (1, 2, 4, 8): at output stride 4
    the receptive field spans about 130 pixels, the whole object of a 128x128 image,
    which the equivariance losses need to place parts consistently under rotation.
    `activation_checkpointing` applies to each convolution-BatchNorm-ReLU block, or to
    all six at once for "selective" (the network is one stage)."""

    activation_checkpointing = "none"

    def __init__(self, width: int = 32):
        super().__init__()
        w = int(width)
        self.out_channels = 4 * w
        self.layers = nn.Sequential(
            _conv_bn_relu(3, w, stride=2),
            _conv_bn_relu(w, 2 * w, stride=2),
            _conv_bn_relu(2 * w, 2 * w, dilation=1),
            _conv_bn_relu(2 * w, 4 * w, dilation=2),
            _conv_bn_relu(4 * w, 4 * w, dilation=4),
            _conv_bn_relu(4 * w, 4 * w, dilation=8),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return checkpointing.run_stages((self.layers,), x, self.activation_checkpointing)


def small_net(
    num_parts: int,
    *,
    width: int = 32,
    head_dilations: Sequence[int] = SMALL_HEAD_DILATIONS,
    input_mean: Sequence[float] = IMAGENET_MEAN,
    input_std: Sequence[float] = IMAGENET_STD,
    batchnorm: str = "train",
    activation_checkpointing: str = "none",
) -> PartSegmenter:
    """Small segmentation network for K = `num_parts` parts; logits at (ceil(H/4),
    ceil(W/4)). BatchNorm affine parameters are trained (there is no pretraining).
    activation_checkpointing: as `deeplab_resnet`'s."""
    trunk = SmallDilatedNet(width)
    return PartSegmenter(
        trunk,
        trunk.out_channels,
        num_parts,
        head_dilations,
        input_mean=input_mean,
        input_std=input_std,
        batchnorm=batchnorm,
        activation_checkpointing=activation_checkpointing,
    )
