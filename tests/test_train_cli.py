"""`scops-train` / `python -m scops_fast.train`."""

import json
import subprocess
import sys

from train_helpers import tiny_config

from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.cli import main
from scops_fast.train.progress import read_metrics


def write_config(tmp_path, **overrides):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config(**overrides).to_dict()))
    return path


def test_train_then_resume_from_the_run_directory(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    argv = ["--config", str(config), "--steps", "2", "--out", str(out), "--no-progress"]
    assert main(argv + ["--backend", "reference", "--set", "data.args.n=6"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 2 and ckpt["config"]["steps"] == 2
    assert ckpt["config"]["loss"]["backend"] == "reference"
    assert ckpt["config"]["data"]["args"]["n"] == 6
    assert main(["--resume", "--out", str(out), "--steps", "4", "--no-progress"]) == 0
    assert load_checkpoint(out)["step"] == 4
    assert [r["step"] for r in read_metrics(out)] == [2, 4]
    assert "step 4/4" in capsys.readouterr().err


def test_errors_name_the_field(tmp_path, capsys):
    config = write_config(tmp_path)
    assert (
        main(["--config", str(config), "--set", "model.arch=resnet", "--out", str(tmp_path)]) == 2
    )
    assert "model.arch: expected one of" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"num_parts": 4,}}')
    assert main(["--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "scops_fast.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert "--config" in result.stdout and "--resume" in result.stdout
