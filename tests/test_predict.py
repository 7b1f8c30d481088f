"""scops-predict: part maps, overlays and part centres for a folder of new images."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny_config

from scops_fast.cli.predict import main
from scops_fast.train import Trainer


def photos(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (30, 41), "sub/b.jpg": (64, 48), "c.png": (17, 23)}
    for rel, (h, w) in sizes.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / rel)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either")
    return sizes


def test_maps_overlays_and_centres_for_every_image(tmp_path, capsys):
    Trainer(tiny_config(steps=1), tmp_path / "run", progress=False, tensorboard=False).train()
    sizes = photos(tmp_path / "photos")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tmp_path / "run"), "--images", str(tmp_path / "photos")]
    assert main(argv + ["--out", str(out), "--no-progress"]) == 0
    assert "3 images, 1 unreadable skipped" in capsys.readouterr().err
    k = 3
    for rel, (h, w) in sizes.items():
        part_map = Image.open((out / "maps" / rel).with_suffix(".png"))
        assert part_map.mode == "P" and part_map.size == (w, h)
        assert np.asarray(part_map).max() <= k
        assert Image.open((out / "overlays" / rel).with_suffix(".jpg")).size == (w, h)
    report = json.loads((out / "parts.json").read_text())
    assert report["skipped"] == ["broken.jpg"]
    rows = list(csv.DictReader(open(out / "parts.csv")))
    assert len(rows) == 3 * k
    for row in rows:
        result = report["images"][row["image"]]
        part = result["parts"][int(row["part"]) - 1]
        assert int(row["pixels"]) == part["pixels"]
        if part["pixels"] == 0:  # an empty part has no centre, and is not drawn
            assert row["x"] == "" and part["center"] is None
        else:
            h, w = result["size"]
            assert 0 <= float(row["x"]) <= w - 1 and 0 <= float(row["y"]) <= h - 1
    # The maps are the arg-max of what predict_parts gives for the image.
    assert sum(int(r["pixels"]) for r in rows if r["image"] == "a.png") <= 30 * 41


def test_an_original_snapshot_and_bad_arguments(tmp_path, capsys):
    from test_original_model import original_state

    snapshot = tmp_path / "model_60000.pth"
    torch.save(original_state("resnet101"), snapshot)
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "x.png")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(snapshot), "--images", str(folder), "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 0
    assert "original checkpoint, K=4" in capsys.readouterr().err
    assert (out / "maps" / "x.png").exists()
    missing = ["--checkpoint", str(snapshot), "--images", str(tmp_path / "no"), "--out", "o"]
    assert main(missing) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_missing_gpu_and_a_file_as_out_are_named(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "x.png")
    # No model is loaded for either: the checkpoint need not exist.
    argv = ["--checkpoint", str(tmp_path / "nothing"), "--images", str(folder)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(argv + ["--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scops-predict: error: --device: 'cuda' asked for, but torch sees no")
    assert not (tmp_path / "o").exists()
    afile = tmp_path / "afile.txt"
    afile.write_text("notes")
    assert main(argv + ["--out", str(afile)]) == 2
    assert f"--out: {afile} is a file; name a folder" in capsys.readouterr().err
    assert afile.read_text() == "notes"
    # Two images whose maps would be one file.
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "x.jpg")
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert (
        "x.jpg and x.png would share the part map maps/x.png, one written over the other"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()
    (folder / "x.jpg").unlink()
    # Its own maps would be read as images by the next run (and by training).
    inside = folder / "predicted"
    assert main(argv + ["--out", str(inside)]) == 2
    assert f"--out: {inside} is inside --images {folder}" in capsys.readouterr().err
    assert not inside.exists()


def trained(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(steps=1), run, progress=False, tensorboard=False).train()
    return run


@pytest.mark.parametrize(
    "batch_size, workers, resize", [(2, 0, "squash"), (3, 1, "squash"), (2, 1, "letterbox")]
)
def test_batches_give_what_one_image_at_a_time_gives(tmp_path, batch_size, workers, resize):
    """In float64 (no rounding to hide behind): every image's map and centres equal
    predict_parts on that image alone; odd sizes, a short last batch, reader processes, and
    a model trained on letterboxed photos."""
    from scops_fast.data.imagefiles import image_tensor, load_rgb
    from scops_fast.train.loading import load_any_model, predict_parts
    from scops_fast.train.predict import describe_parts, predict_folder

    net = load_any_model(trained(tmp_path))[0].double()
    net.resize = resize
    sizes = photos(tmp_path / "photos")
    out = tmp_path / "out"
    done = predict_folder(
        net, tmp_path / "photos", out, batch_size=batch_size, workers=workers, progress=False
    )
    assert done == {"images": 3, "new": 3, "reused": 0, "skipped": ["broken.jpg"]}
    report = json.loads((out / "parts.json").read_text())
    for rel in sizes:
        image = image_tensor(load_rgb(tmp_path / "photos" / rel))[None].double()
        probs = predict_parts(net, image)[0]
        assert report["images"][rel]["parts"] == describe_parts(probs)
        labels = np.asarray(Image.open((out / "maps" / rel).with_suffix(".png")))
        assert np.array_equal(labels, probs.argmax(0).numpy())
    assert not list(out.rglob("*.partial"))


def test_an_interrupted_run_goes_on_without_redoing_finished_images(tmp_path):
    """2,000 images, SIGINT part-way, the same command again: the first run's files are kept
    as they were (not rewritten), the rest are done, the summaries hold all 2,000. The child
    sends itself SIGINT after its 320th image, with Python's Ctrl-C handler in place: Python
    installs it only where SIGINT is not ignored, and a suite started in the background by a
    shell without job control (nohup ... &) ignores it, so the child ran to the end."""
    import os
    import subprocess
    import sys

    from conftest import hang_guard

    run = trained(tmp_path)
    folder = tmp_path / "photos"
    for i in range(20):
        (folder / f"d{i:02d}").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(2000):
        pixels = (rng.random((6 + i % 5, 7, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"d{i % 20:02d}" / f"{i:04d}.png")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(run), "--images", str(folder), "--out", str(out), "--no-progress"]
    interrupting = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import scops_fast.train.predict as predict\n"
        "from scops_fast.cli.predict import main\n"
        "write, done = predict._write_image_outputs, []\n"
        "def counted(*args, **kwargs):\n"
        "    write(*args, **kwargs)\n"
        "    done.append(1)\n"
        "    if len(done) == 320:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "predict._write_image_outputs = counted\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", interrupting, *argv, "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=hang_guard(300),
    )
    err = child.stderr
    records = out / "parts.jsonl"
    assert child.returncode == 130, err
    assert "interrupted; the finished images are kept" in err
    assert not list(out.rglob("*.partial"))
    first = [json.loads(line)["image"] for line in records.read_text().splitlines()]
    assert 300 <= len(first) < 2000
    stamps = {rel: os.stat((out / "maps" / rel).with_suffix(".png")).st_mtime_ns for rel in first}

    assert main(argv + ["--workers", "0"]) == 0
    rows = list(csv.DictReader(open(out / "parts.csv")))
    assert len(rows) == 2000 * 3
    assert len(json.loads((out / "parts.json").read_text())["images"]) == 2000
    for rel, stamp in stamps.items():  # not redone
        assert os.stat((out / "maps" / rel).with_suffix(".png")).st_mtime_ns == stamp
    assert len(records.read_text().splitlines()) == 2000


def test_a_rerun_with_another_model_is_refused_unless_overwrite(tmp_path, capsys):
    run = trained(tmp_path)
    photos(tmp_path / "photos")
    out = tmp_path / "out"
    argv = ["--images", str(tmp_path / "photos"), "--out", str(out), "--no-progress"]
    assert main(["--checkpoint", str(run), *argv]) == 0
    assert main(["--checkpoint", str(run), *argv]) == 0  # the same model: nothing to do
    assert "3 images (3 from an earlier run)" in capsys.readouterr().err
    other = tmp_path / "other"
    Trainer(tiny_config(steps=2), other, progress=False, tensorboard=False).train()
    before = (out / "parts.json").read_text()
    assert main(["--checkpoint", str(other), *argv]) == 2
    err = capsys.readouterr().err
    assert f"--out: {out} holds predictions of another checkpoint or other settings" in err
    assert (out / "parts.json").read_text() == before
    assert main(["--checkpoint", str(other), *argv, "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "3 images, 1 unreadable skipped" in err and "earlier run" not in err


def test_device_auto_and_batch_arguments(tmp_path, capsys, monkeypatch):
    run = trained(tmp_path)
    photos(tmp_path / "photos")
    argv = ["--checkpoint", str(run), "--images", str(tmp_path / "photos")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(argv + ["--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "K=3, cpu)" in capsys.readouterr().err  # auto: no GPU, so the CPU
    for flag, value, least in (("--batch-size", "0", 1), ("--workers", "-1", 0)):
        with pytest.raises(SystemExit) as stop:
            main(argv + ["--out", str(tmp_path / "p"), flag, value])
        assert stop.value.code == 2
        error = f"scops-predict: error: argument {flag}: expected at least {least}, got {value}\n"
        assert capsys.readouterr().err.endswith(error)
    for device in ("cuda:1", "gpu"):
        assert main(argv + ["--out", str(tmp_path / "p"), "--device", device]) == 2
        assert f"scops-predict: error: --device: '{device}'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_letterboxed_model_sees_black_bars_and_they_are_cut_from_its_output(tmp_path):
    """A run trained with --resize letterbox (or crop) is shown photos undistorted: a 20x40
    image padded to 40x40 with black rows above and below, and the output's rows 10..29."""
    import torch.nn.functional as F

    from scops_fast.train.loading import (
        framed_input,
        load_model,
        network_input,
        network_logits,
        predict_parts,
    )

    run = tmp_path / "run"
    photos(tmp_path / "photos")
    folder = {"root": str(tmp_path / "photos"), "resize": "crop"}
    cfg = tiny_config(steps=1, **{"data.dataset": "folder", "data.args": folder})
    Trainer(cfg, run, progress=False, tensorboard=False).train()
    net = load_model(run).double()
    assert net.resize == "crop"
    image = torch.rand(
        1, 3, 20, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    net_input, box = framed_input(image, (32, 32), True)
    assert box == (0, -10, 40, 30)
    padded = torch.zeros(1, 3, 40, 40, dtype=torch.float64)
    padded[:, :, 10:30] = image
    assert torch.equal(net_input, network_input(padded, (32, 32)))
    logits = F.interpolate(network_logits(net, net_input), size=(40, 40), mode="bilinear")
    expected = torch.softmax(logits[:, :, 10:30], dim=1)
    assert torch.allclose(predict_parts(net, image), expected, atol=1e-12)
    # A square photo: letterboxing is the identity, the same as squashing.
    square = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    net.resize = "squash"
    squashed = predict_parts(net, square)
    net.resize = "letterbox"
    assert torch.equal(predict_parts(net, square), squashed)
