"""`scops-train` / `python -m scops_fast.train`."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import hang_guard
from train_helpers import child_env, tiny_config

from scops_fast.cli.train import main
from scops_fast.train.checkpoint import load_checkpoint
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


def test_resume_auto_starts_a_run_then_continues_it(tmp_path, capsys):
    """One command for a job's first run and its restarts (a scheduler's requeue)."""
    out = tmp_path / "out"
    argv = ["--config", str(write_config(tmp_path)), "--out", str(out), "--no-progress"]
    assert main(argv + ["--resume", "auto", "--steps", "2"]) == 0
    assert load_checkpoint(out)["step"] == 2
    assert main(argv + ["--resume", "auto", "--steps", "4"]) == 0
    assert load_checkpoint(out)["step"] == 4
    assert [r["step"] for r in read_metrics(out)] == [2, 4]
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(argv + ["--resume", "runs/other"])
    assert refused.value.code == 2
    assert "--resume: expected nothing or 'auto', got 'runs/other'" in capsys.readouterr().err


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
        timeout=hang_guard(120),
    )
    assert result.returncode == 0
    assert "--config" in result.stdout and "--resume" in result.stdout


def test_a_folder_holding_a_run_is_not_overwritten_by_accident(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    argv = ["--config", str(config), "--steps", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    done = capsys.readouterr().err
    assert f"checkpoint {out / 'checkpoint.pt'}" in done and "done: 2 steps" in done
    before = (out / "checkpoint.pt").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0


def test_unusable_backend_or_data_root_fail_before_any_folder(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "never"
    assert main(["--config", str(config), "--backend", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scops-train: error: loss.backend 'cuda' cannot run") and not out.exists()
    assert err.count("\n") == 1
    # The CUDA kernels' K limit (the emulation shares it): at start, not at the first step.
    argv = ["--config", str(config), "--backend", "cuda_emu", "--out", str(out)]
    assert main([*argv, "--set", "model.num_parts=40"]) == 2
    assert capsys.readouterr().err == (
        "scops-train: error: loss.backend 'cuda_emu' cannot run concentration_loss with "
        "model.num_parts = 40: its kernels hold at most 33 channels of pred (K + 1), got 41; "
        "use loss.backend 'auto', which passes such inputs to another backend\n"
    )
    assert not out.exists()
    argv = ["--config", "celeba-k8", "--set", f"data.args.root={tmp_path / 'nowhere'}"]
    argv += ["--set", "model.pretrained=null", "--set", "features.kind=lowlevel"]
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "list_landmarks_celeba.txt is missing" in err and "MAFL/training.txt" in err
    assert not out.exists()


def test_ctrl_c_saves_the_step_and_says_how_to_resume(tmp_path):
    import signal
    import time

    config = write_config(tmp_path, steps=400, log_every=1, checkpoint_every=1000)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "scops_fast.train", "--config", str(config), "--out", str(out)]
    env = child_env()
    # SIGINT as in a terminal: a suite run in the background inherits it ignored, which the
    # trainer leaves so (the Ctrl-C of the shell that started it is not for it).
    proc = subprocess.Popen(
        cmd + ["--no-progress"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Wait for training to be under way (a logged step), then interrupt.
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step 3/"):
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=hang_guard(120)) == 130, "".join(lines) + rest
    assert "Traceback" not in rest
    assert f"scops-train --out {out} --resume" in rest
    step = load_checkpoint(out)["step"]
    assert f"stopped by SIGINT after step {step}" in rest and 3 <= step < 400
    resumed = subprocess.run(
        [sys.executable, "-m", "scops_fast.train", "--out", str(out), "--resume", "--steps"]
        + [str(step + 2), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=hang_guard(300),
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(out)["step"] == step + 2


def test_the_end_of_run_summary_gives_the_verdict_and_the_report(tmp_path):
    import types

    from scops_fast.cli.train import summary

    (tmp_path / "report.html").write_text("<html></html>")
    criteria = {
        "landmark_error_ratio_vs_kmeans": 0.56,
        "landmark_ratio_max": 0.8,
        "part_nmi_margin_vs_kmeans": 0.223,
        "nmi_margin_min": 0.1,
        "passed": True,
    }
    trainer = types.SimpleNamespace(
        step=2500,
        cfg=types.SimpleNamespace(name="demo"),
        train_seconds=342.4,
        metrics={"criteria": criteria},
    )
    text = summary(trainer, tmp_path)
    assert "done: 2500 steps of demo in 342 s" in text
    assert "criteria met: landmark error 0.56x k-means's (at most 0.8); part NMI +0.223" in text
    assert f"report: {tmp_path / 'report.html'}" in text
    trainer.metrics["criteria"] = {**criteria, "passed": False}
    assert "criteria not met" in summary(trainer, tmp_path)


def test_training_on_a_folder_of_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = (rng.random((40 + i, 50, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"cat_{i}.jpg")
    out = tmp_path / "run"
    argv = ["--config", "demo", "--data", "folder", "--root", str(photos), "--steps", "2"]
    argv += ["--out", str(out), "--no-progress", "--set", "data.batch_size=2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "nothing to score" in err and f"report: {out / 'report.html'}" in err
    cfg = load_checkpoint(out)["config"]
    # The demo's synthetic-data arguments and evaluation did not follow it to the folder.
    assert cfg["data"]["args"] == {"root": str(photos)} and not cfg["evaluation"]["enabled"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "criteria" not in metrics and "model" not in metrics
    assert (out / "parts.png").exists()


def test_the_same_data_set_keeps_its_arguments(tmp_path):
    from scops_fast.cli.train import build_parser, data_overrides
    from scops_fast.train.config import load_config

    cfg = load_config("celeba-k8")
    args = build_parser().parse_args(["--data", "celeba", "--root", "/data/CelebA"])
    args_cfg = cfg.replace(data_overrides(args, cfg))
    assert args_cfg.data.args["root"] == "/data/CelebA"
    assert args_cfg.data.args["min_face_area"] == 0.3  # the preset's protocol stays
    args = build_parser().parse_args(["--data", "cub", "--root", "/data/CUB"])
    cub = cfg.replace(data_overrides(args, cfg))
    assert cub.data.args == {"root": "/data/CUB", "split": "train"}
    assert cub.evaluation.enabled
    assert cub.evaluation.test_args == {"root": "/data/CUB", "split": "test"}


def test_a_missing_gpu_and_a_file_as_out_are_one_line_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    import torch

    config = write_config(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert main(["--config", str(config), "--out", str(out), "--set", "device=cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scops-train: error: device: 'cuda' asked for, but torch sees no CUDA")
    assert "Traceback" not in err and not out.exists()
    afile = tmp_path / "afile.txt"
    afile.write_text("notes")
    assert main(["--config", str(config), "--out", str(afile)]) == 2
    assert (
        capsys.readouterr().err == f"scops-train: error: --out: {afile} is a file; name a folder\n"
    )
    assert afile.read_text() == "notes"


def test_an_empty_folder_and_too_few_images_say_what_to_do(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    config = write_config(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    common = ["--config", str(config), "--data", "folder", "--out", str(out)]
    assert main([*common, "--root", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scops-train: error: data: no images found under {empty} (searched ")
    assert err.count("\n") == 1 and not out.exists()
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(few / f"{i}.png")
    assert main([*common, "--root", str(few), "--set", "data.batch_size=5"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size: 5 is larger than the data set (3 images); lower it, e.g. " in err
    assert "--set data.batch_size=3" in err and not out.exists()


def test_resume_without_a_run_is_refused_and_a_resume_says_what_it_kept(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "typo"
    assert main(["--resume", "--out", str(out), "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"scops-train: error: --resume: {out} holds no run ({out / 'checkpoint.pt'} does not "
        "exist); check --out, or drop --resume to start a new run there\n"
    )
    assert not out.exists()
    run = tmp_path / "run"
    assert main(["--config", str(config), "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    both = ["--out", str(run), "--resume", "--overwrite", "--no-progress"]
    assert main(both) == 2
    assert "--resume and --overwrite: choose one" in capsys.readouterr().err
    argv = ["--resume", "--out", str(run), "--steps", "3", "--no-progress"]
    assert main(argv + ["--set", "model.num_parts=7", "--image-size", "48"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "resuming" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "scops-train: resuming at step 2 with the checkpoint's settings; ignored (the "
        "checkpoint's kept): model.num_parts, data.image_size; changed: steps 2 -> 3 (the "
        "learning rate follows the 3-step schedule from here: 0 -> "
    )
    assert load_checkpoint(run)["config"]["model"]["num_parts"] != 7


def test_a_warm_start_the_small_network_cannot_use_is_refused(tmp_path, capsys):
    config = write_config(tmp_path)
    run = tmp_path / "run"
    argv = ["--config", str(config), "--steps", "1", "--no-progress"]
    assert main([*argv, "--out", str(run)]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    assert main([*argv, "--out", str(other), "--set", f"model.pretrained={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "scops-train: error: model.pretrained: the small network has no pretrained weights"
    )
    assert "Traceback" not in err and not other.exists()


@pytest.mark.parametrize(
    "setting, error",
    [
        (
            "evaluation.test_dataset=foo",
            "evaluation.test_dataset: expected one of ['celeba', 'cub', 'cub-original', 'folder', "
            "'synthetic'] or 'package.module:attribute', got 'foo'",
        ),
        (
            "evaluation.test_args.foo=1",
            "evaluation.test_args do not fit 'synthetic': SyntheticParts.__init__() got an "
            "unexpected keyword argument 'foo'",
        ),
        ("evaluation.test_args.n=0", "evaluation.test_dataset: SyntheticParts has no items"),
        ("evaluation.limit=0", "config: evaluation.limit: expected at least 1, got 0"),
    ],
)
def test_an_evaluation_mistake_stops_the_run_before_its_first_step(
    tmp_path, capsys, setting, error
):
    config = write_config(tmp_path, **{"evaluation.enabled": True})
    out = tmp_path / "run"
    argv = ["--config", str(config), "--steps", "1", "--out", str(out), "--no-progress"]
    assert main([*argv, "--set", setting]) == 2
    assert capsys.readouterr().err == f"scops-train: error: {error}\n"
    assert not out.exists()


def test_saliency_coverage_is_checked_before_anything_is_written(tmp_path, capsys):
    from PIL import Image

    photos, maps = tmp_path / "photos", tmp_path / "maps"
    for folder in (photos / "sub", maps):
        folder.mkdir(parents=True)
    names = ["a.png", "b.jpg", "c.png", "sub/d.png", "sub/e.png", "f.png"]
    for name in names:
        Image.new("RGB", (20, 20), (90, 20, 20)).save(photos / name)
    config = write_config(tmp_path)
    out = tmp_path / "run"
    argv = ["--config", str(config), "--steps", "1", "--out", str(out), "--no-progress"]
    argv += ["--data", "folder", "--root", str(photos), "--saliency", str(maps)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"scops-train: error: data set 'folder': saliency folder {maps} holds no map for any of "
        f"the 6 images under {photos} (a map is named like its image: a.png for a.png)\n"
    )
    assert not out.exists()
    for name in ("b.png", "sub/e.png"):  # maps for 2 of the 6
        (maps / name).parent.mkdir(exist_ok=True)
        Image.new("L", (20, 20), 255).save(maps / name)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"saliency folder {maps} holds maps for 2 of the 6 images under {photos}; 4 have none "
        "(first: a.png); add them, or leave those images out with missing_saliency='skip' "
        "(scops-train: --set data.args.missing_saliency=skip)\n"
    ) in err
    assert err.count("\n") == 1 and not out.exists()
    assert (
        main([*argv, "--set", "data.args.missing_saliency=skip", "--set", "data.batch_size=2"]) == 0
    )
    err = capsys.readouterr().err
    assert f"ImageFolder: left out 4 of 6 images that have no saliency map in {maps}" in err
    assert "skipping unreadable" not in err


def test_resize_is_for_folders(tmp_path, capsys):
    config = write_config(tmp_path)
    argv = ["--config", str(config), "--out", str(tmp_path / "r"), "--resize", "crop"]
    assert main(argv) == 2
    assert "--resize: only for --data folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_or_wrong_weights_as_a_deeplab_warm_start_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path)
    run = tmp_path / "run"
    assert main(["--config", str(config), "--steps", "1", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["--config", str(config), "--out", str(tmp_path / "new"), "--no-progress"]
    argv += ["--set", "model.arch=deeplab_resnet50"]
    assert main([*argv, "--set", f"model.pretrained={run}"]) == 2
    assert capsys.readouterr().err == (
        f"scops-train: error: model.pretrained: {run} is a scops_fast run's checkpoint, not "
        "ImageNet ResNet weights: continue that run with scops-train --out ITS_FOLDER "
        "--resume; a new run cannot start from another run's weights\n"
    )
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    assert main([*argv, "--set", f"model.pretrained={other}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scops-train: error: model.pretrained: not a torchvision resnet50")
    assert err.count("\n") == 1 and not (tmp_path / "new").exists()


def test_a_missing_image_root_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "run"
    missing = tmp_path / "nosuchdir"
    argv = ["--config", str(config), "--data", "folder", "--root", str(missing), "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"scops-train: error: data set 'folder': image folder {missing} does not exist\n"
    )
    assert not out.exists()
