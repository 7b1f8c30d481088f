"""scops-export: ONNX (run in onnxruntime) and torch.export (.pt2, loaded without scops_fast)
give the model's part probabilities.

Tolerance: float32 through a network is chaotic under reordered sums, so each comparison's
tolerance is taken from the model itself: 8x the largest change of its output when its inputs
and weights move by one ulp (torch.nextafter), with a floor of 1e-6.
"""

import copy
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_helpers import tiny_config

from scops_fast.cli.export import main
from scops_fast.train import Trainer
from scops_fast.train.export import PartProbabilities
from scops_fast.train.loading import load_any_model, predict_parts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    Trainer(tiny_config(steps=1), out, progress=False, tensorboard=False).train()
    return out


def one_ulp_spread(module, x) -> float:
    moved = PartProbabilities(copy.deepcopy(module.net))
    with torch.no_grad():
        for p in moved.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        x_moved = torch.nextafter(x, torch.full_like(x, 2.0))
        return float((moved(x_moved) - module(x)).abs().max())


def reference(run, x):
    net = load_any_model(run)[0]
    module = PartProbabilities(net).eval()
    with torch.no_grad():
        expected = module(x)
    # The export is what scops-predict computes for images already at the trained size.
    assert torch.allclose(expected, predict_parts(net, x), atol=1e-6)
    return expected, max(8 * one_ulp_spread(module, x), 1e-6)


def test_exported_program_matches_and_loads_without_scops_fast(run, tmp_path, capsys):
    out = tmp_path / "parts.pt2"
    assert main(["--checkpoint", str(run), "--format", "exported-program", "--out", str(out)]) == 0
    assert "images (B, 3, 32, 32) in [0, 1] -> part probabilities (B, 4, 32, 32)" in (
        capsys.readouterr().err
    )
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # another batch
    expected, tol = reference(run, x)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys\n"
        "sys.modules['scops_fast'] = None  # any import of it fails\n"
        "import torch\n"
        f"program = torch.export.load({str(out)!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(program(x), {str(tmp_path / 'y.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = torch.load(tmp_path / "y.pt")
    assert got.shape == (3, 4, 32, 32)
    assert float((got - expected).abs().max()) <= tol


def test_onnx_matches_in_onnxruntime(run, tmp_path):
    pytest.importorskip("onnxscript", reason="the export extra (onnx, onnxscript) is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    out = tmp_path / "parts.onnx"
    assert main(["--checkpoint", str(run), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch in (1, 5):  # the batch is dynamic
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        expected, tol = reference(run, x)
        (got,) = session.run(["parts"], {"image": x.numpy()})
        assert got.shape == (batch, 4, 32, 32)
        assert np.abs(got - expected.numpy()).max() <= tol
        assert np.allclose(got.sum(1), 1.0, atol=1e-5)


def test_bad_arguments_are_named(run, tmp_path, capsys, monkeypatch):
    argv = ["--checkpoint", str(run), "--format", "exported-program"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert f"--out: {tmp_path} is a folder; name the file to write" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "no" / "x.pt2")]) == 2
    assert "--out: folder" in capsys.readouterr().err
    import scops_fast.train.export as export

    monkeypatch.setattr(export, "onnx_available", lambda: False)
    assert main(["--checkpoint", str(run), "--format", "onnx", "--out", str(tmp_path / "a")]) == 2
    assert "--format onnx: needs onnx and onnxscript" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "a").exists()


def readme_snippet(after: str) -> str:
    """The first ```python block after `after` in docs/training.md."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


@pytest.mark.parametrize(
    "fmt, after, file",
    [
        ("onnx", "part). With onnxruntime", "cats.onnx"),
        ("exported-program", "With torch alone", "cats.pt2"),
    ],
)
def test_the_readme_snippets_run(run, tmp_path, monkeypatch, fmt, after, file):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(run), "--format", fmt, "--out", file]) == 0
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(
        "cat.jpg"
    )
    code = readme_snippet(after).replace("size = 128", "size = 32")  # the test model's size
    scope: dict = {}
    exec(compile(code, "docs/training.md snippet", "exec"), scope)
    labels = np.asarray(scope["labels"])
    assert labels.shape == (32, 32) and 0 <= labels.min() and labels.max() <= 3
