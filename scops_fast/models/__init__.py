"""Networks of the SCOPS training system: part segmenters (DeepLab-v2 ResNet-50, a
small CPU network) and the frozen feature extractors of the semantic loss."""

from scops_fast.models.common import (
    BATCHNORM_MODES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PartSegmenter,
    freeze_batchnorm_affine,
)
from scops_fast.models.deeplab import deeplab_resnet50, logits_size
from scops_fast.models.small import small_net
from scops_fast.models.vgg import (
    FEATURE_KINDS,
    LowLevelFeatures,
    VGG19Features,
    build_features,
)

ARCHITECTURES = ("deeplab_resnet50", "small")

__all__ = [
    "ARCHITECTURES",
    "BATCHNORM_MODES",
    "FEATURE_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LowLevelFeatures",
    "PartSegmenter",
    "VGG19Features",
    "build_features",
    "deeplab_resnet50",
    "freeze_batchnorm_affine",
    "logits_size",
    "small_net",
]
