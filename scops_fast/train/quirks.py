"""The original SCOPS code's quirks, each a config field, and the table that compares the
two CelebA presets: `celeba-k8-original` (the original's behaviour, quirks included) and
`celeba-k8` (the same protocol with the quirks that are mistakes corrected).

    python -m scops_fast.train.quirks      # docs/paper.md's table, from the presets
"""

from __future__ import annotations

from dataclasses import dataclass

ORIGINAL_PRESET, CORRECTED_PRESET = "celeba-k8-original", "celeba-k8"


@dataclass(frozen=True)
class Quirk:
    field: str
    name: str
    original: str


QUIRKS = (
    Quirk(
        "model.input_std",
        "network input",
        "caffe convention: 0-255 RGB minus the mean (122.7, 116.7, 104.0), no scaling",
    ),
    Quirk(
        "model.block_stride",
        "ResNet layout",
        "caffe ResNet: layer2 downsamples in its first 1x1 convolution",
    ),
    Quirk(
        "model.train_downsample_bn",
        "shortcut BatchNorms",
        "the four shortcut BatchNorms' scale and shift train; every other BatchNorm's are frozen",
    ),
    Quirk(
        "optim.nested_param_repeats",
        "repeated parameters",
        "its optimiser group lists a backbone parameter once per module that contains it, so "
        "SGD steps it 1, 3 or 4 times per step: 3x (shortcuts 4x) the steady-state step",
    ),
    Quirk(
        "features.bgr_quirk",
        "BGR mean in the VGG input",
        "adds the BGR-ordered mean back to RGB images: VGG sees red 18.7 levels low, blue high",
    ),
    Quirk(
        "jitter.bgr_quirk",
        "BGR mean before the jitter",
        "the colour jitter sees the same shifted colours (clipped at 0 and 255)",
    ),
    Quirk(
        "jitter.implementation",
        "colour jitter",
        "image by image through PIL, 8-bit levels truncated, not rounded",
    ),
    Quirk(
        "loss.concentration_reduction",
        "concentration loss",
        "divided by the batch size twice (weight 10 at batch 6; the corrected preset divides "
        "once with weight 10/6: the same loss at batch 6)",
    ),
    Quirk(
        "warp.grid_solve",
        "TPS grid precision",
        "solved in float32: the grid misses the control points by about 6e-6",
    ),
    Quirk(
        "warp.logits_padding",
        "logits padding",
        "logits are warped with zeros even when images use border padding (eqv_border_padding)",
    ),
    Quirk(
        "data.args.crop",
        "CelebA framing",
        "the whole image resized to 256x256, aspect ratio not kept (null); 'face' would crop "
        "around the face box",
    ),
    Quirk(
        "data.args.min_face_area",
        "face-area filter",
        "trains only on images whose face box covers at least 0.3 of the image",
    ),
    Quirk(
        "data.args.reader",
        "image decoding",
        "OpenCV: its decoder and bilinear resize of the 8-bit image, landmarks truncated",
    ),
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(field: str, value) -> str:
    if field == "model.input_std":
        return "caffe (0-255, mean only)" if value[0] < 0.01 else "ImageNet (mean, std)"
    if value is None:
        return "`null`"
    return f"`{value}`" if not isinstance(value, float) else f"`{value:g}`"


def quirk_table() -> str:
    """The Markdown table of QUIRKS with both presets' values."""
    from scops_fast.train.config import load_config

    original = flatten(load_config(ORIGINAL_PRESET).to_dict())
    corrected = flatten(load_config(CORRECTED_PRESET).to_dict())
    lines = [
        f"| quirk | what the original does | field | `{ORIGINAL_PRESET}` | `{CORRECTED_PRESET}` |",
        "|---|---|---|---|---|",
    ]
    for q in QUIRKS:
        a, b = _show(q.field, original[q.field]), _show(q.field, corrected[q.field])
        lines.append(f"| {q.name} | {q.original} | `{q.field}` | {a} | {b} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(quirk_table(), end="")
