"""Loading a checkpoint never runs code from it: weights_only unpickling, a clear refusal."""

import os
import subprocess
import sys

import pytest
import torch
from train_helpers import tiny_config

from scops_fast.train import Trainer, load_model
from scops_fast.train.checkpoint import CheckpointError, load_checkpoint


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trained(tmp_path):
    Trainer(tiny_config(), tmp_path / "run", progress=False, tensorboard=False).train(until=1)
    return tmp_path / "run" / "checkpoint.pt"


def test_our_checkpoints_load_with_weights_only(trained):
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["step"] == 1 and isinstance(ckpt["torch_version"], str)


def test_a_crafted_checkpoint_runs_nothing(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = torch.load(trained, weights_only=True)
    ckpt["config"]["payload"] = RunsCode(marker)
    torch.save(ckpt, trained)
    with pytest.raises(CheckpointError, match="refused.*Nothing in it was run"):
        load_checkpoint(trained)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(trained)
    from scops_fast.cli.eval import main

    assert main(["--checkpoint", str(trained)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(trained)!r}, weights_only=False)"],
        check=True,
        capture_output=True,
    )
    assert marker.exists()


def test_checkpoints_of_earlier_versions_still_load(trained):
    """They stored torch.__version__ as a TorchVersion (a str subclass)."""
    ckpt = torch.load(trained, weights_only=True)
    ckpt["torch_version"] = torch.__version__
    assert type(ckpt["torch_version"]).__name__ == "TorchVersion"
    torch.save(ckpt, trained)
    assert load_checkpoint(trained)["step"] == 1


@pytest.mark.parametrize(
    "settings, field, what",
    [
        (["model.arch=deeplab_resnet50"], "model.pretrained", "ResNet-50 weights"),
        (["features.kind=vgg19"], "features.weights", "VGG-19 weights"),
        (
            [
                "model.arch=deeplab_resnet50",
                "model.pretrained_format=original",
                "model.block_stride=1x1",
            ],
            "model.pretrained",
            "original SCOPS weights",
        ),
    ],
)
def test_a_weight_file_that_is_not_one_is_named_in_one_line(
    tmp_path, capsys, settings, field, what
):
    """A photo, a pickle that would run code and a truncated file, given as weights: one line
    naming the field, never torch's advice to load with weights_only=False (which would run
    the code), nothing run and no run folder."""
    from PIL import Image

    from scops_fast.cli.train import main

    marker = tmp_path / "pwned"
    photo, crafted, truncated = (
        tmp_path / "photo.jpg",
        tmp_path / "crafted.pth",
        tmp_path / "cut.pth",
    )
    Image.new("RGB", (8, 8)).save(photo)
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCode(marker)}, crafted)
    torch.save({"conv1.weight": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:120])
    expected = {
        photo: "was refused: it is not a file of tensors",
        crafted: "was refused: it is not a file of tensors",
        truncated: "is unreadable (truncated or corrupt?)",
    }
    out = tmp_path / "run"
    for path, says in expected.items():
        argv = ["--config", "demo", "--steps", "1", "--out", str(out), "--no-progress"]
        for setting in [*settings, f"{field}={path}"]:
            argv += ["--set", setting]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"scops-train: error: {field}: {what} '{path}' {says}"), err
        assert err.count("\n") == 1 and "weights_only" not in err and "Traceback" not in err
        assert not out.exists() and not marker.exists()
