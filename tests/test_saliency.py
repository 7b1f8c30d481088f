"""Saliency for images without maps: scops-saliency, --saliency auto, SyntheticParts's
saliency kinds."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import scops_fast.data.saliency as saliency
from scops_fast.cli.saliency import main
from scops_fast.data import ImageFolder, SyntheticParts
from scops_fast.data.saliency import estimate_saliency
from scops_fast.train.data import dataset_from_spec


def rgb_of(item) -> np.ndarray:
    return (item["img"] * 255).round().byte().permute(1, 2, 0).numpy()


def iou(mask: np.ndarray, fg: np.ndarray) -> float:
    return float((mask & fg).sum() / max((mask | fg).sum(), 1))


def creatures(folder, sizes):
    """SyntheticParts images (something to find) saved under `folder` at the given sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (rel, (h, w)) in enumerate(sizes.items()):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb_of(SyntheticParts(i + 1, size=(h, w), seed=3)[i])).save(folder / rel)


SIZES = {"a.png": (40, 56), "sub/b.jpg": (48, 48), "sub/deeper/c.png": (300, 270)}


def test_command_writes_a_grey_map_of_each_images_size(tmp_path, capsys):
    creatures(tmp_path / "photos", SIZES)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "photos" / "notes.txt").write_text("not an image either")
    out = tmp_path / "maps"
    assert main([str(tmp_path / "photos"), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "3 maps" in err and "1 unreadable skipped" in err
    assert "broken.jpg" in err  # listed by name
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "sub/b.png", "sub/deeper/c.png"]
    for rel, (h, w) in SIZES.items():
        grey = Image.open(out / rel.replace(".jpg", ".png"))
        assert grey.mode == "L" and grey.size == (w, h)
        values = np.asarray(grey)
        # White on the object, black elsewhere: both present, the object not the whole frame.
        assert values.max() == 255 and values.min() == 0
        assert 0.05 < (values >= 128).mean() < 0.8


def test_the_maps_are_what_training_reads(tmp_path):
    creatures(tmp_path / "photos", {"a.png": (40, 56)})
    main([str(tmp_path / "photos"), "--out", str(tmp_path / "maps"), "--no-progress"])
    item = ImageFolder(tmp_path / "photos", size=(40, 56), saliency_dir=tmp_path / "maps")[0]
    expected = estimate_saliency(Image.open(tmp_path / "photos" / "a.png"))
    assert torch.equal(item["saliency"], torch.from_numpy(expected).float() / 255)


def test_the_maps_of_a_folder_with_an_unreadable_image_are_accepted(tmp_path, capsys):
    """scops-saliency skips an image it cannot read, so it has no map; training skips that
    image too, so the folder of maps is complete for what training reads. A readable image
    without a map is still refused, and named."""
    photos, maps = tmp_path / "photos", tmp_path / "maps"
    creatures(photos, {"a.png": (40, 56), "b.png": (40, 56)})
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a whole JPEG")
    assert main([str(photos), "--out", str(maps), "--no-progress"]) == 0
    data = ImageFolder(photos, size=(40, 56), saliency_dir=maps)
    assert data.files == ["a.png", "b.png", "broken.jpg"]
    assert [data[i]["name"] for i in range(3)] == ["a.png", "b.png", "a.png"]
    assert "skipping unreadable" in capsys.readouterr().err
    (maps / "b.png").unlink()
    with pytest.raises(
        ValueError, match=r"holds maps for 1 of the 3 .* 2 have none \(first: b.png\)"
    ):
        ImageFolder(photos, size=(40, 56), saliency_dir=maps)


def test_images_that_would_share_a_map_are_refused_by_name(tmp_path, capsys):
    """a.png and a.jpg would both have the map a.png, the second written over the first (or
    read for both): refused before anything is written, naming both."""
    photos, maps = tmp_path / "photos", tmp_path / "maps"
    creatures(photos, {"a.png": (40, 56), "sub/b.png": (40, 56), "a.jpg": (40, 56)})
    assert main([str(photos), "--out", str(maps), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        "scops-saliency: error: a.jpg and a.png would share the saliency map a.png, one written "
        "over the other: rename one of them\n"
    )
    assert not maps.exists()
    maps.mkdir()
    with pytest.raises(ValueError, match="a.jpg and a.png would share the saliency map a.png"):
        ImageFolder(photos, size=32, saliency_dir=maps)
    assert len(ImageFolder(photos, size=32)) == 3  # without maps, nothing is shared


@pytest.mark.rounding
@pytest.mark.parametrize("size", [64, 128])
def test_estimate_beats_all_ones_on_synthetic_parts(size):
    # The demo's test images. Measured over 300 of them: 0.91 (64 px) and 0.92 (128 px)
    # against 0.33 for all ones (docs/saliency_results.json). Noise model: GrabCut in
    # OpenCV, whose code paths differ by CPU: with its plain code (cv2.setUseOptimized(False))
    # the maps are the same here, and images moved by one 8-bit level at random pixels move
    # the mean IoU margin by 0.02 (0.57-0.60 against 0.3) and keep all 8 above 0.2 (>= 6).
    ds = SyntheticParts(8, size=size, seed=2)
    ours, ones = [], []
    for i in range(len(ds)):
        item = ds[i]
        fg = item["fg"].numpy()
        ours.append(iou(estimate_saliency(rgb_of(item)) >= 128, fg))
        ones.append(iou(np.ones_like(fg), fg))
    assert np.mean(ours) > np.mean(ones) + 0.3, (ours, ones)
    # Some images fail (GrabCut keeps only part of a creature), not most.
    assert sum(o > n + 0.2 for o, n in zip(ours, ones, strict=True)) >= 6, (ours, ones)


@pytest.mark.rounding
def test_estimate_keeps_thin_parts_of_small_images():
    # A first version, run at 64 px and without GrabCut's grown possible foreground, matched
    # the degraded map's IoU but kept under half of the ears and arms here (0.47); the demo
    # trained with it put 22 % of its part centres on the background (5 % now). Noise model
    # as above: one-level moves of the images give 0.742-0.747 against 0.65.
    ds = SyntheticParts(8, size=64, seed=2)
    covered = []
    for i in range(len(ds)):
        item = ds[i]
        limbs = (item["parts"] >= 5) & (item["parts"] <= 8)  # ears and arms
        covered.append((estimate_saliency(rgb_of(item)) >= 128)[limbs.numpy()].mean())
    assert np.mean(covered) > 0.65, covered


def test_estimate_is_deterministic():
    # GrabCut draws from OpenCV's global generator; an unseeded one changed the maps.
    rgb = rgb_of(SyntheticParts(17, size=64, seed=2)[16])
    first = estimate_saliency(rgb)
    cv2.randu(np.zeros(1000), 0, 1)
    assert np.array_equal(first, estimate_saliency(rgb))


def test_estimate_of_a_flat_image_does_not_fail():
    grey = estimate_saliency(np.full((20, 30, 3), 128, np.uint8))
    assert grey.shape == (20, 30) and grey.dtype == np.uint8


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def counting(image, **kwargs):
        calls.append(1)
        return estimate_saliency(image, **kwargs)

    monkeypatch.setattr(saliency, "estimate_saliency", counting)
    return calls


def test_auto_computes_once_then_reuses(tmp_path, counted):
    root = tmp_path / "photos"
    creatures(root, {"a.png": (40, 40), "sub/b.png": (32, 48)})
    args = {"root": str(root), "saliency_dir": "auto"}
    first = dataset_from_spec("folder", args, 32)  # as scops-train --saliency auto builds it
    cache = root / ".scops_saliency"
    assert first.saliency_dir == cache.resolve() and len(counted) == 2
    assert first.saliency_counts == {"written": 2, "reused": 0, "skipped": []}
    maps = sorted(cache.rglob("*.png"))
    assert [p.relative_to(cache).as_posix() for p in maps] == ["a.png", "sub/b.png"]
    mtimes = [p.stat().st_mtime_ns for p in maps]

    second = dataset_from_spec("folder", args, 32)
    assert len(counted) == 2, "the second run recomputed maps"
    assert second.saliency_counts["reused"] == 2
    assert [p.stat().st_mtime_ns for p in maps] == mtimes
    # The cache is never read as images, and the items carry the cached maps.
    assert second.files == ["a.png", "sub/b.png"]
    expected = np.asarray(Image.open(cache / "a.png").resize((32, 32), Image.BILINEAR))
    assert torch.equal(second[0]["saliency"], torch.from_numpy(expected.copy()).float() / 255)

    # An image changed after its map was written gets a new map; the others are kept.
    later = maps[0].stat().st_mtime + 10
    os.utime(root / "sub" / "b.png", (later, later))
    third = ImageFolder(root, size=32, saliency_dir="auto")
    assert len(counted) == 3 and third.saliency_counts["written"] == 1


def test_auto_recomputes_a_cache_of_another_method(tmp_path, counted):
    root = tmp_path / "photos"
    creatures(root, {"a.png": (40, 40)})
    ImageFolder(root, size=32, saliency_dir="auto")
    (root / ".scops_saliency" / "method.json").write_text(json.dumps({"method": "older"}))
    ImageFolder(root, size=32, saliency_dir="auto")
    assert len(counted) == 2


def test_auto_falls_back_to_the_user_cache_for_a_read_only_root(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    creatures(root, {"a.png": (40, 40)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = saliency._writable_dir
    monkeypatch.setattr(
        saliency, "_writable_dir", lambda p: p.name != ".scops_saliency" and real(p)
    )
    data = ImageFolder(root, size=32, saliency_dir="auto")
    assert (tmp_path / "cache") in data.saliency_dir.parents
    assert (data.saliency_dir / "a.png").is_file() and not (root / ".scops_saliency").exists()


def test_errors_name_the_argument(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: DIR:" in err and "missing" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "DIR: no image files" in capsys.readouterr().err
    creatures(tmp_path / "photos", {"a.png": (20, 20)})
    assert main([str(tmp_path / "photos"), "--out", str(tmp_path / "photos" / "maps")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "photos" / "maps").exists()


def test_python_m_form(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scops_fast.cli.saliency", str(tmp_path / "nope"), "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"scops-saliency: error: DIR: {tmp_path / 'nope'} is not a folder" in proc.stderr


def test_synthetic_parts_saliency_kinds():
    kinds = {
        k: SyntheticParts(3, size=48, seed=4, saliency=k)[2]
        for k in ("degraded", "estimate", "ones")
    }
    base = kinds["degraded"]
    for item in kinds.values():
        for key in ("img", "parts", "landmarks", "visible"):
            assert torch.equal(item[key], base[key])
    assert torch.equal(kinds["ones"]["saliency"], torch.ones(48, 48))
    expected = torch.from_numpy(estimate_saliency(rgb_of(base))).float() / 255
    assert torch.equal(kinds["estimate"]["saliency"], expected)
    assert not torch.equal(kinds["degraded"]["saliency"], expected)
    with pytest.raises(ValueError, match="saliency must be one of"):
        SyntheticParts(3, saliency="true")


def test_train_flag_auto_is_for_folders(tmp_path, capsys):
    from scops_fast.cli import train as cli
    from scops_fast.train import load_config

    args = cli.build_parser().parse_args(["--data", "folder", "--root", "p", "--saliency", "auto"])
    flags = cli.data_overrides(args, load_config("demo"))
    assert flags["data.args"] == {"root": "p", "saliency_dir": "auto"}
    assert flags["features.saliency"] is True
    # The synthetic data set (the demo's) has no folder to estimate maps for.
    argv = ["--config", "demo", "--saliency", "auto", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert "--saliency auto: only for --data folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
