"""A checkout of the original SCOPS code made importable on the CPU with torch 2.x, for the
fixture script and the side-by-side benchmark. Nothing of the original is copied into this
repository: `prepare_original` copies a checkout given by path into a temporary folder and
patches the copy there (every `.cuda(...)` removed, `torch.cuda.FloatTensor` ->
`torch.Tensor`, `align_corners=True` in its grid sampler, the torch 0.4 behaviour it was
written for; and DTYPE_EDITS, which follow torch's default dtype where it names float32),
then stubs the modules it imports only for visualisation.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import types

import numpy as np

#: (file, pattern, replacement) edits that make the original run on the CPU with torch 2.x.
CPU_EDITS = (
    ("*.py", r"\.cuda\([^()]*\)", ""),
    # torch.Tensor is torch.FloatTensor under torch's default float32; see DTYPE_EDITS.
    ("*.py", r"torch\.cuda\.FloatTensor", "torch.Tensor"),
    (
        "tps/grid_sample.py",
        r"F\.grid_sample\(input, grid, mode='bilinear', padding_mode=padding_mode\)",
        "F.grid_sample(input, grid, mode='bilinear', padding_mode=padding_mode, "
        "align_corners=True)",
    ),
)

#: Edits that change nothing under torch's default dtype, float32 (bit for bit: the fixtures
#: regenerate byte-identical), and let a run under torch.set_default_dtype(torch.float64)
#: compute in float64 throughout: the float32 types the original names become the default
#: dtype. The step fixture's float64 run needs them (scripts/make_original_fixtures.py).
DTYPE_EDITS = (
    ("tps/rand_tps.py", r"\.type\(torch\.FloatTensor\)", ".type(torch.get_default_dtype())"),
    (
        "tps_stn_pytorch/tps_grid_gen.py",
        r"target_control_points\.float\(\)",
        "target_control_points.to(torch.get_default_dtype())",
    ),
    # The coordinate maps: in float64 otherwise the concentration loss subtracts a float64
    # centre from float32 coordinates in float32 (a 0-d tensor does not promote).
    ("utils/utils.py", r"\.astype\(np\.float32\)", ".astype(torch.zeros(0).numpy().dtype)"),
)


def git_head(path: pathlib.Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def prepare_original(original: pathlib.Path, tps: pathlib.Path, work: pathlib.Path):
    """A patched copy of the original in `work`, importable; returns its folder."""
    dest = work / "scops_original"
    shutil.copytree(original, dest, ignore=shutil.ignore_patterns(".git", "umr"))
    sub = dest / "tps_stn_pytorch"
    if sub.exists():
        shutil.rmtree(sub)
    shutil.copytree(tps, sub, ignore=shutil.ignore_patterns(".git"))
    for glob, pattern, repl in CPU_EDITS:
        for path in dest.rglob(glob):
            text = path.read_text()
            new = re.sub(pattern, repl, text)
            if new != text:
                path.write_text(new)
    for name, pattern, repl in DTYPE_EDITS:
        path = dest / name
        text, count = re.subn(pattern, repl, path.read_text())
        if count == 0:
            raise SystemExit(f"{name}: found nothing to edit for {pattern!r}")
        path.write_text(text)
    grid_sample = (dest / "tps" / "grid_sample.py").read_text()
    if "align_corners=True" not in grid_sample:
        raise SystemExit("could not add align_corners=True to tps/grid_sample.py")

    # Modules the original imports for visualisation only.
    for name in ("tensorboardX", "visdom"):
        stub = types.ModuleType(name)
        stub.SummaryWriter = stub.Visdom = lambda *a, **k: None
        sys.modules[name] = stub
    import scipy.misc
    from PIL import Image

    scipy.misc.imread = lambda path, *a, **k: np.asarray(Image.open(path).convert("RGB"))
    sys.path.insert(0, str(dest))
    import visualize

    visualize.Visualizer = NullVisualizer
    return dest


class NullVisualizer:
    """Stands in for the original's tensorboard/visdom Visualizer."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None
