"""Networks of the SCOPS training system: part segmenters (DeepLab-v2 ResNet-50, a
small CPU network) and the frozen feature extractors of the semantic loss."""

from scops_fast.models.common import (
    BATCHNORM_MODES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PartSegmenter,
    freeze_batchnorm_affine,
)
from scops_fast.models.deeplab import (
    deeplab_resnet,
    deeplab_resnet50,
    deeplab_resnet101,
    logits_size,
)
from scops_fast.models.original import load_original
from scops_fast.models.small import small_net
from scops_fast.models.vgg import (
    FEATURE_KINDS,
    LowLevelFeatures,
    VGG19Features,
    build_features,
)

ARCHITECTURES = ("deeplab_resnet50", "deeplab_resnet101", "small")

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
    "deeplab_resnet",
    "deeplab_resnet50",
    "deeplab_resnet101",
    "freeze_batchnorm_affine",
    "load_original",
    "logits_size",
    "small_net",
]
