"""`scops-export`: the trained part segmenter as a file that runs without scops_fast.

    scops-export --checkpoint runs/cats --format onnx --out cats.onnx
    scops-export --checkpoint runs/cats --format exported-program --out cats.pt2

The exported graph takes images (B, 3, H, W), RGB in [0, 1], at the size the model was trained
at (H = W = the checkpoint's `data.image_size`; 256 for an original SCOPS snapshot), any batch B,
and gives part probabilities (B, K+1, H, W): channel 0 the background, 1..K the parts, summing
to 1 over the channels. Inside: the network's own input normalisation, the network, its logits
upsampled to the input size (bilinear, align_corners=True, as in training) and a softmax; it is
`scops_fast.train.loading.network_logits` plus the softmax that `predict_parts` applies.
Resizing a photo to that size is left to the caller (scops-predict does it with antialiased
bilinear resampling).

- `onnx`: torch's ONNX exporter (torch.export based; needs the `export` extra: onnx and
  onnxscript); runs in onnxruntime.
- `exported-program`: `torch.export` saved with `torch.export.save` as a .pt2; needs torch only
  (`torch.export.load(path).module()`).
"""

from __future__ import annotations

import os
import pathlib

import torch
from torch import nn

from scops_fast.train.loading import load_any_model, network_logits

FORMATS = ("onnx", "exported-program")
INSTALL_HINT = "needs onnx and onnxscript: pip install 'scops_fast[export]'"


class PartProbabilities(nn.Module):
    """A trained network as images in [0, 1] -> part probabilities, nothing else."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(network_logits(self.net, image), dim=1)


def trained_size(net) -> int:
    size = getattr(net, "image_size", None)
    if isinstance(size, int | float):
        return int(size)
    h, w = size
    if h != w:
        raise ValueError(f"--checkpoint: a model trained at {h}x{w}; exports are square")
    return int(h)


def exportable(net) -> tuple[PartProbabilities, torch.Tensor, dict]:
    """(module in eval mode, example input at the trained size, dynamic batch shapes)."""
    size = trained_size(net)
    module = PartProbabilities(net.float().eval()).eval()
    example = torch.rand(2, 3, size, size)
    dynamic = {"image": {0: torch.export.Dim("batch", min=1, max=1024)}}
    return module, example, dynamic


def export_onnx(net, path: pathlib.Path) -> None:
    module, example, dynamic = exportable(net)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["parts"],
        dynamic_shapes=dynamic,
        verbose=False,
    )
    program.save(str(path))


def export_program(net, path: pathlib.Path) -> None:
    module, example, dynamic = exportable(net)
    program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    torch.export.save(program, str(path))


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def export(checkpoint, fmt: str, out) -> dict:
    """Writes the export (atomically: a temporary name, then renamed); returns what it wrote."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = pathlib.Path(out)
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder; name the file to write")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {out.parent} does not exist")
    if fmt == "onnx" and not onnx_available():
        raise ValueError(f"--format onnx: {INSTALL_HINT}")
    net, kind = load_any_model(checkpoint, "cpu")
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # torch.export wants its suffix
    with torch.no_grad():
        (export_onnx if fmt == "onnx" else export_program)(net, tmp)
    os.replace(tmp, out)
    size = trained_size(net)
    return {"path": str(out), "kind": kind, "size": size, "parts": net.num_parts}
