"""Weights in the original SCOPS layout: its snapshots (`model_<step>.pth`, the state dict
of its `Res50_Deeplab_2branch` / `Res101_Deeplab_2branch`) and the caffe-converted DeepLab
initialisations it starts from.

The original network is a DeepLab-v2 ResNet in the caffe layout (layer2 downsamples in its
first 1x1 convolution) whose classifier is `layer5.conv2d_list.{0..3}`; it takes 0-255 RGB
images minus the per-channel mean `CAFFE_MEAN_RGB`, neither divided by 255 nor by a standard
deviation. `load_original` gives our `PartSegmenter` with those weights and that input
convention: `model(x)` on the original's input returns the original's last output, the
low-resolution logits (B, K+1, h, w); `model.normalize` maps [0, 1] RGB images to that input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from scops_fast.models.common import CAFFE_MEAN_RGB, PartSegmenter
from scops_fast.models.deeplab import DEEPLAB_DILATIONS, deeplab_resnet
from scops_fast.models.weights import WeightsFileError, load_tensor_file, resolve_weights

#: The original's initialisations (its model_factory's URLs), found in the torch hub cache
#: where its own download would have put them.
ORIGINAL_WEIGHT_FILES = {50: ("resnet50-caffe-22edcc82.pth",), 101: ("resnet101COCO-41f33a49.pth",)}
#: Where the original's model_factory downloads them from.
ORIGINAL_WEIGHTS_URL = "http://vllab1.ucmerced.edu/~whung/adv-semi-seg/"

#: `PartSegmenter.input_mean` / `input_std` ([0, 1] units) that make `normalize` give the
#: original's input: (x - mean / 255) / (1 / 255) = 255 x - mean.
CAFFE_INPUT_MEAN = tuple(m / 255.0 for m in CAFFE_MEAN_RGB)
CAFFE_INPUT_STD = (1.0 / 255.0,) * 3

_CLASSIFIER = re.compile(r"^layer5\.conv2d_list\.(\d+)\.(weight|bias)$")
#: Prefixes of wrapped state dicts: DataParallel's, and the caffe DeepLab files' "Scale.".
_PREFIXES = ("module.", "Scale.")


class CheckpointFormatError(ValueError):
    """A weight file is not in the layout the loader expects; the message says which."""


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def original_depth(state: Mapping[str, torch.Tensor]) -> int:
    """50 or 101, from the number of layer3 blocks of an original-layout state dict."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layer3.")}
    depth = {6: 50, 23: 101}.get(len(blocks))
    if depth is None:
        raise CheckpointFormatError(
            f"expected the 6 (ResNet-50) or 23 (ResNet-101) layer3 blocks of the original "
            f"DeepLab layout, found {len(blocks)}"
        )
    return depth


def original_num_parts(state: Mapping[str, torch.Tensor]) -> int | None:
    """K of an original snapshot (its classifier has K+1 outputs); None without one."""
    weight = state.get("layer5.conv2d_list.0.weight")
    return None if weight is None else int(weight.shape[0]) - 1


def convert_original_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout state dict renamed to `PartSegmenter`'s: conv1/bn1 -> the stem,
    layerN -> backbone.layerN, layer5.conv2d_list.i -> head.classifier.branches.i. Keys
    it does not know (a caffe file's `fc`) are dropped."""
    out = {}
    for key, value in _strip_prefixes(state).items():
        head, _, rest = key.partition(".")
        match = _CLASSIFIER.match(key)
        if match:
            out[f"head.classifier.branches.{match[1]}.{match[2]}"] = value
        elif head in ("conv1", "bn1"):
            out[f"backbone.stem.{0 if head == 'conv1' else 1}.{rest}"] = value
        elif head in ("layer1", "layer2", "layer3", "layer4"):
            out[f"backbone.{key}"] = value
    return out


def _read(source) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    try:
        state = load_tensor_file(source, "original SCOPS weights")
    except WeightsFileError as exc:
        raise CheckpointFormatError(str(exc)) from None
    if isinstance(state, Mapping) and "state_dict" in state and len(state) <= 4:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointFormatError(f"{os.fspath(source)!r}: expected a state dict of tensors")
    return dict(state)


def _check_layout(net: PartSegmenter) -> None:
    trunk = net.backbone
    if getattr(trunk, "block_stride", None) != "1x1":
        raise ValueError(
            "original weights need the caffe block layout: set model.block_stride to '1x1'"
        )


def load_original_weights(net: PartSegmenter, source, *, strict_head: bool = False) -> None:
    """Copies original-layout weights (a path, "torchvision" for the original's file in the
    torch hub cache, or a state dict) into `net`, a DeepLab of the same depth in the
    caffe block layout. The classifier is copied when its shape matches (the original's
    partial copy), unless `strict_head` requires it."""
    _check_layout(net)
    depth = net.backbone.depth
    if isinstance(source, str | os.PathLike) and not isinstance(source, Mapping):
        source = resolve_weights(
            source,
            ORIGINAL_WEIGHT_FILES[depth],
            f"original DeepLab-ResNet{depth}",
            "model.pretrained",
            url_base=ORIGINAL_WEIGHTS_URL,
        )
    state = _strip_prefixes(_read(source))
    if original_depth(state) != depth:
        raise CheckpointFormatError(
            f"the file holds a ResNet-{original_depth(state)}, the network is a ResNet-{depth}"
        )
    converted = convert_original_state(state)
    own = net.state_dict()
    head = [k for k in converted if k.startswith("head.")]
    head_fits = bool(head) and all(own[k].shape == converted[k].shape for k in head if k in own)
    if strict_head and not head_fits:
        raise CheckpointFormatError(
            f"the file's classifier does not give {net.num_parts + 1} outputs"
        )
    if not head_fits:
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    wrong = [k for k, v in converted.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise CheckpointFormatError(
            f"{len(wrong)} tensors have other shapes than the original DeepLab-ResNet{depth}'s, "
            f"e.g. {k}: {tuple(converted[k].shape)} vs {tuple(own[k].shape)}"
        )
    missing, unexpected = net.load_state_dict(converted, strict=False)
    # Files of torch < 0.4.1 have no BatchNorm step counters; a head left out stays fresh.
    missing = [
        k
        for k in missing
        if not k.endswith("num_batches_tracked")
        and not k.startswith("input_")
        and not (k.startswith("head.") and not head_fits)
    ]
    if missing or unexpected:
        raise CheckpointFormatError(
            f"not an original DeepLab-ResNet{depth} state dict: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}"
        )


def original_snapshot(path) -> dict | None:
    """The state dict at `path` if it is an original SCOPS snapshot (a flat state dict with
    the SCOPS classifier), else None (a folder, a checkpoint of ours, anything else).
    Read with weights_only=True: a file that would run code when unpickled is refused."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours to explain: the caller's loader does
        return None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        return None
    return dict(state) if original_num_parts(_strip_prefixes(state)) is not None else None


def load_original(
    source,
    *,
    num_parts: int | None = None,
    train_downsample_bn: bool = True,
) -> PartSegmenter:
    """Our network with the weights of an original SCOPS snapshot or a caffe DeepLab
    initialisation (a path, read with `weights_only=True`, or a state dict), in eval mode.

    K is read from the snapshot's classifier. A file without one (an ImageNet/COCO
    initialisation) or with another number of outputs keeps a freshly initialised
    classifier for `num_parts`, as the original's partial copy does. The depth (50 or
    101) is read from the file. `train_downsample_bn` keeps the original's trainable
    shortcut BatchNorms for further training.
    """
    state = _strip_prefixes(_read(source))
    file_parts = original_num_parts(state)
    parts = num_parts if num_parts is not None else file_parts
    if parts is None:
        raise ValueError(
            "num_parts: the file has no SCOPS classifier (layer5.conv2d_list), so give the "
            "number of parts K"
        )
    net = deeplab_resnet(
        parts,
        depth=original_depth(state),
        head_dilations=DEEPLAB_DILATIONS,
        input_mean=CAFFE_INPUT_MEAN,
        input_std=CAFFE_INPUT_STD,
        block_stride="1x1",
        train_downsample_bn=train_downsample_bn,
    )
    load_original_weights(net, state)
    return net.eval()


__all__ = [
    "CAFFE_INPUT_MEAN",
    "CAFFE_INPUT_STD",
    "CAFFE_MEAN_RGB",
    "CheckpointFormatError",
    "convert_original_state",
    "load_original",
    "load_original_weights",
    "original_snapshot",
    "original_depth",
    "original_num_parts",
]
