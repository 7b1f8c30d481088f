"""Images as viewers show them (EXIF orientation, 16-bit, alpha, CMYK, palette), each kind a
generated file, read by every reader and carried through training, prediction and saliency;
unreadable files named by the commands themselves, whatever Python's warning filters say."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps
from train_helpers import tiny_config

from scops_fast.data import ImageFolder
from scops_fast.data.imagefiles import ALPHA_BACKGROUND, load_grey, load_rgb, load_rgb_as_stored

RED, BLUE = (220, 20, 20), (20, 20, 220)


def phone_photo(path, orientation=6, size=(100, 60)):
    """A landscape-stored JPEG (w, h) = size, left half red, right half blue, tagged with
    `orientation`: as a phone stores a photo taken upright."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = RED
    pixels[:, w // 2 :] = BLUE
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=95)


def near(pixel, colour, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol))


@pytest.mark.parametrize(
    "orientation, size, red_at, blue_at",
    [
        (1, (100, 60), (30, 10), (30, 90)),  # as stored: red on the left
        (3, (100, 60), (30, 90), (30, 10)),  # turned 180: red on the right
        (6, (60, 100), (10, 30), (90, 30)),  # turned 90 clockwise: red on top
        (8, (60, 100), (90, 30), (10, 30)),  # turned 90 anticlockwise: red at the bottom
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, size, red_at, blue_at):
    phone_photo(tmp_path / "p.jpg", orientation)
    rgb = load_rgb(tmp_path / "p.jpg")
    assert rgb.size == size  # (width, height) as every viewer shows it
    a = np.asarray(rgb)
    assert near(a[red_at], RED) and near(a[blue_at], BLUE)
    # The original's CUB reader keeps the stored pixels.
    assert load_rgb_as_stored(tmp_path / "p.jpg").size == (100, 60)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    grey = np.full((6, 5), 40000, np.uint16)
    grey[0, 0], grey[0, 1] = 0, 65535
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # PIL keeps the 16 bits
    a = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert a[1, 1].tolist() == [156] * 3  # 40000 * 255 / 65535 = 155.6, not clipped to 255
    assert a[0, 0].tolist() == [0] * 3 and a[0, 1].tolist() == [255] * 3
    assert np.asarray(load_grey(tmp_path / "g16.png"))[1, 1] == 156
    # 16-bit RGB: PIL reads the high bytes, also a scaling.
    import cv2

    rgb16 = np.zeros((4, 4, 3), np.uint16)
    rgb16[..., 0] = 40000
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    assert np.asarray(load_rgb(tmp_path / "rgb16.png"))[0, 0].tolist() == [156, 0, 0]


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:, :3, 3] = 0  # ... transparent on the left
    rgba[:, 3:, 3] = 128  # half opaque on the right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_rgb(tmp_path / "a.png"))
    assert tuple(a[0, 0]) == ALPHA_BACKGROUND == (255, 255, 255)
    assert near(a[0, 5], (255, 127, 127), tol=1)
    la = Image.fromarray(np.stack([np.zeros((3, 3), np.uint8)] * 2, -1), "LA")
    la.save(tmp_path / "la.png")
    assert np.asarray(load_rgb(tmp_path / "la.png"))[0, 0].tolist() == [255] * 3


def test_palette_images_go_through_their_palette_and_transparency(tmp_path):
    p = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    p.putpalette([0, 0, 0, 10, 200, 30, 250, 240, 5] + [0] * 759)
    p.save(tmp_path / "p.png", transparency=0)
    a = np.asarray(load_rgb(tmp_path / "p.png"))
    assert a[0, 0].tolist() == [255, 255, 255]  # index 0 is transparent: the background
    assert a[0, 1].tolist() == [10, 200, 30] and a[1, 1].tolist() == [250, 240, 5]
    p.save(tmp_path / "p.gif")
    assert np.asarray(load_rgb(tmp_path / "p.gif"))[0, 1].tolist() == [10, 200, 30]


def test_cmyk_is_converted_as_shown(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan ink
    cmyk.save(tmp_path / "c.jpg", quality=95)
    cmyk.save(tmp_path / "c.tif")
    for name in ("c.jpg", "c.tif"):
        assert near(np.asarray(load_rgb(tmp_path / name))[4, 4], (0, 255, 255), tol=3), name


def test_an_embedded_colour_profile_is_applied(tmp_path):
    from PIL import ImageCms

    pixels = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels).save(tmp_path / "srgb.png", icc_profile=srgb)
    # An sRGB profile is (within LittleCMS's rounding) the identity.
    assert np.abs(np.asarray(load_rgb(tmp_path / "srgb.png")).astype(int) - pixels).max() <= 1
    # A profile that cannot be parsed leaves the stored values, not an unreadable image.
    Image.fromarray(pixels).save(tmp_path / "bad.png", icc_profile=b"not a profile")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "bad.png")), pixels)


def awkward_folder(root):
    """The kinds of file a real photo folder holds, good and damaged."""
    root.mkdir()
    phone_photo(root / "phone.jpg")
    grey16 = np.full((40, 30), 40000, np.uint16)
    grey16[:, :10] = 8000
    Image.fromarray(grey16).save(root / "grey16.png")
    Image.new("RGBA", (30, 30), (200, 0, 0, 0)).save(root / "cutout.png")
    Image.new("CMYK", (20, 24), (0, 200, 0, 0)).save(root / "print.jpg")
    Image.new("P", (16, 16)).save(root / "palette.gif")
    Image.new("L", (1, 1), 77).save(root / "dot.png")
    Image.new("RGB", (400, 20), (0, 90, 0)).save(root / "panorama.png")
    (root / "ünïcode dir").mkdir()
    Image.new("RGB", (12, 12), (9, 9, 9)).save(root / "ünïcode dir" / "名前.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is a text file")
    good = (root / "phone.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return {"empty.jpg", "text.png", "truncated.jpg"}


def test_awkward_files_through_train_predict_and_saliency(tmp_path, capfd):
    from scops_fast.cli.predict import main as predict_main
    from scops_fast.cli.saliency import main as saliency_main
    from scops_fast.train import Trainer

    photos = tmp_path / "photos"
    damaged = awkward_folder(photos)
    # Training reads them upright and 8-bit.
    ds = ImageFolder(photos, size=(20, 12))
    phone = ds[ds.files.index("phone.jpg")]["img"]
    assert near(phone[:, 2, 6] * 255, RED, 15) and near(phone[:, 17, 6] * 255, BLUE, 15)
    grey = ds[ds.files.index("grey16.png")]["img"]
    assert 0.5 < float(grey.max()) < 0.7  # 40000 / 65535 = 0.61, not saturated at 1
    overrides = {
        "steps": 6,  # 12 slots at batch 2: every image is asked for
        "data.dataset": "folder",
        "data.args": {"root": str(photos)},
    }
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as under -W ignore
        Trainer(tiny_config(**overrides), run, progress=False, tensorboard=False).train()
    err = capfd.readouterr().err
    for name in damaged:
        assert f"skipping unreadable {photos / name}" in err, err
    summary = json.loads((run / "metrics.json").read_text())
    assert sorted(summary["training"]["skipped_files"]) == sorted(str(photos / n) for n in damaged)

    out = tmp_path / "pred"
    argv = ["--checkpoint", str(run), "--images", str(photos), "--out", str(out)]
    assert predict_main(argv + ["--no-progress", "--workers", "1"]) == 0
    err = capfd.readouterr().err
    assert f"8 images, {len(damaged)} unreadable skipped" in err
    for name in damaged:
        assert f"skipping unreadable {photos / name}" in err
    assert sorted(json.loads((out / "parts.json").read_text())["skipped"]) == sorted(damaged)
    assert Image.open(out / "maps" / "phone.png").size == (60, 100)  # upright
    assert Image.open(out / "overlays" / "phone.jpg").size == (60, 100)
    assert (out / "maps" / "ünïcode dir" / "名前.png").is_file()
    overlay = np.asarray(Image.open(out / "overlays" / "grey16.jpg")).astype(int)
    assert overlay.max() < 250  # the 16-bit grey was not saturated to white

    maps = tmp_path / "maps"
    assert saliency_main([str(photos), "--out", str(maps), "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert f"{len(damaged)} unreadable skipped" in err
    assert Image.open(maps / "phone.png").size == (60, 100)


def test_skip_lines_survive_warning_filters_in_a_fresh_interpreter(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    (photos / "b.png").write_bytes(b"broken")
    code = (
        "from scops_fast.data import ImageFolder\n"
        f"ds = ImageFolder({str(photos)!r}, size=8)\n"
        "[ds[i] for i in range(len(ds))]\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONWARNINGS": "ignore"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"skipping unreadable {photos / 'b.png'}" in done.stderr


def test_upright_leaves_an_image_without_a_tag_untouched():
    from scops_fast.data.imagefiles import upright

    im = Image.new("RGB", (5, 3))
    assert upright(im) is im
    assert ImageOps.exif_transpose(im).size == (5, 3)
