"""scops-predict: part maps, overlays and part centres for a folder of new images."""

import csv
import json

import numpy as np
import torch
from PIL import Image
from train_helpers import tiny_config

from scops_fast.train import Trainer
from scops_fast.train.predict import main


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
