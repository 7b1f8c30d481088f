"""The on-disk loaders against small fake trees in the original layouts."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scops_fast.data import CUB, CelebAWild, ImageFolder

RED, BLUE = (255, 0, 0), (0, 0, 255)


def marked_image(w, h, marks, box=None):
    """Grey image with 7x7 coloured squares centred on pixel positions marks {(x, y): colour};
    inside box (x, y, w, h) the grey is lighter, so crops can be checked too."""
    a = np.full((h, w, 3), 90, dtype=np.uint8)
    if box is not None:
        x, y, bw, bh = box
        a[y : y + bh, x : x + bw] = 160
    for (x, y), colour in marks.items():
        a[y - 3 : y + 4, x - 3 : x + 4] = colour
    return Image.fromarray(a)


def colour_at(img, xy):
    x, y = (int(round(float(v))) for v in xy)
    return img[:, y, x]


def is_colour(rgb, colour):
    return bool(torch.all((rgb - torch.tensor(colour) / 255.0).abs() < 0.25))


def write_celeba(root, n=6):
    (root / "img_celeba").mkdir(parents=True)
    (root / "MAFL").mkdir()
    (root / "sal").mkdir()
    lm_rows, box_rows, names = [], [], []
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        name = f"{i:06d}.jpg"
        w, h = int(rng.integers(150, 220)), int(rng.integers(150, 220))
        bx, by, bw, bh = int(rng.integers(10, 40)), int(rng.integers(10, 40)), 80, 100
        eyes = [(bx + 25, by + 35), (bx + 55, by + 35)]
        rest = [(bx + 40, by + 55), (bx + 28, by + 75), (bx + 52, by + 75)]
        marked_image(w, h, {eyes[0]: RED, eyes[1]: BLUE}, (bx, by, bw, bh)).save(
            root / "img_celeba" / name, quality=95
        )
        sal = np.zeros((h, w), dtype=np.uint8)
        sal[by : by + bh, bx : bx + bw] = 255
        Image.fromarray(sal).save(root / "sal" / f"{i:06d}.png")
        lm_rows.append(name + "".join(f" {x} {y}" for x, y in eyes + rest))
        box_rows.append(f"{name} {bx} {by} {bw} {bh}")
        names.append(name)
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
    header += "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (root / "list_landmarks_celeba.txt").write_text(f"{n}\n{header}\n" + "\n".join(lm_rows) + "\n")
    (root / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "\n".join(box_rows) + "\n"
    )
    (root / "MAFL" / "training.txt").write_text("\n".join(names[: n - 2]) + "\n")
    (root / "MAFL" / "testing.txt").write_text("\n".join(names[n - 2 :]) + "\n")
    return names


def test_celeba_wild_crops_to_box_and_maps_landmarks(tmp_path):
    names = write_celeba(tmp_path)
    train = CelebAWild(tmp_path, split="train", size=64, saliency_dir=tmp_path / "sal")
    test = CelebAWild(tmp_path, split="test", size=(64, 64))
    assert train.names == names[:4] and test.names == names[4:]
    assert len(CelebAWild(tmp_path, split="all")) == 6
    assert CelebAWild(tmp_path, split="all_but_test").names == names[:4]
    for ds in (train, test):
        for i in range(len(ds)):
            it = ds[i]
            assert it["img"].shape == (3, 64, 64) and it["saliency"].shape == (64, 64)
            assert it["landmarks"].shape == (5, 2) and it["bbox"].shape == (4,)
            assert is_colour(colour_at(it["img"], it["landmarks"][0]), RED)
            assert is_colour(colour_at(it["img"], it["landmarks"][1]), BLUE)
            # Box 80x100, margin 0.1: square side 120 -> scale 64/120, box in the middle.
            x, y, w, h = it["bbox"].tolist()
            assert (w, h) == pytest.approx((80 * 64 / 120, 100 * 64 / 120), abs=1e-4)
            assert (x + w / 2, y + h / 2) == pytest.approx((32, 32), abs=0.6)
    it = train[0]
    x, y, w, h = it["bbox"].tolist()
    sal = it["saliency"]
    assert float(sal[int(y + h / 2), int(x + w / 2)]) == 1.0
    assert float(sal[1, 1]) == 0.0 and float(sal[int(y + h / 2), int(x) - 3]) == 0.0
    assert torch.equal(test[0]["saliency"], torch.ones(64, 64))


def test_celeba_margin_parameter_changes_the_crop(tmp_path):
    write_celeba(tmp_path, n=3)
    tight = CelebAWild(tmp_path, split="all", size=64, margin=0.0)[0]
    assert tight["bbox"][3] == pytest.approx(64.0, abs=1e-4)  # the box's longer side fills it


def test_celeba_rejects_inconsistent_annotations(tmp_path):
    write_celeba(tmp_path, n=3)
    (tmp_path / "MAFL" / "testing.txt").write_text("999999.jpg\n")
    with pytest.raises(ValueError, match="999999.jpg"):
        CelebAWild(tmp_path, split="test")
    with pytest.raises(ValueError, match="split"):
        CelebAWild(tmp_path, split="val")


def write_cub(root):
    (root / "parts").mkdir(parents=True)
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    images, boxes, split, locs = [], [], [], []
    for i in range(1, 5):
        cls = classes[(i - 1) // 2]
        rel = f"{cls}/{cls.split('.')[1]}_{i:04d}_{i}.jpg"
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
        (root / "segmentations" / cls).mkdir(parents=True, exist_ok=True)
        bx, by, bw, bh = 20.0 + i, 30.0, 100.0, 60.0
        beak, tail = (int(bx + 10), int(by + 20)), (int(bx + 90), int(by + 40))
        marked_image(160, 130, {beak: RED, tail: BLUE}, (int(bx), int(by), 100, 60)).save(
            root / "images" / rel, quality=95
        )
        seg = np.zeros((130, 160), dtype=np.uint8)
        seg[int(by) : int(by + bh), int(bx) : int(bx + bw)] = 255
        Image.fromarray(seg).save(root / "segmentations" / rel.replace(".jpg", ".png"))
        images.append(f"{i} {rel}")
        boxes.append(f"{i} {bx} {by} {bw} {bh}")
        split.append(f"{i} {int(i % 2 == 1)}")
        for part in range(1, 16):
            x, y, v = {2: (*beak, 1), 14: (*tail, 1)}.get(part, (0.0, 0.0, 0))
            locs.append(f"{i} {part} {float(x)} {float(y)} {v}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")


def test_cub_splits_parts_and_crops(tmp_path):
    write_cub(tmp_path)
    train = CUB(tmp_path, split="train", size=48, saliency_dir=tmp_path / "segmentations")
    test = CUB(tmp_path, split="test", size=48, crop=None)
    assert len(train) == 2 and len(test) == 2 and len(CUB(tmp_path, split="all")) == 4
    assert len(CUB(tmp_path, split="all", classes=[2])) == 2
    for ds in (train, test):
        for i in range(len(ds)):
            it = ds[i]
            assert it["img"].shape == (3, 48, 48) and it["landmarks"].shape == (15, 2)
            assert it["visible"].tolist() == [p in (1, 13) for p in range(15)]
            assert torch.isnan(it["landmarks"][0]).all()
            assert is_colour(colour_at(it["img"], it["landmarks"][1]), RED)
            assert is_colour(colour_at(it["img"], it["landmarks"][13]), BLUE)
    it = train[0]
    # bbox crop: 100x60 box, side 120 -> the box is 40 px wide, centred.
    assert it["bbox"].tolist() == pytest.approx([4.0, 12.0, 40.0, 24.0], abs=0.5)
    assert float(it["saliency"][24, 24]) == 1.0 and float(it["saliency"][2, 24]) == 0.0
    whole = test[0]
    assert whole["bbox"].tolist() == pytest.approx(
        [22 * 48 / 160, 30 * 48 / 130, 100 * 48 / 160, 60 * 48 / 130], abs=1e-4
    )


def test_image_folder_with_saliency(tmp_path):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "sal" / "sub").mkdir(parents=True)
    for rel, colour in (("a.jpg", RED), ("sub/b.png", BLUE)):
        Image.new("RGB", (30, 20), colour).save(tmp_path / "img" / rel)
        Image.new("L", (15, 10), 128).save(tmp_path / "sal" / (rel.rsplit(".", 1)[0] + ".png"))
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path / "img", size=(16, 24), saliency_dir=tmp_path / "sal")
    assert ds.files == ["a.jpg", "sub/b.png"]
    it = ds[1]
    assert it["img"].shape == (3, 16, 24) and it["name"] == "sub/b.png"
    assert is_colour(it["img"][:, 8, 12], BLUE)
    assert torch.allclose(it["saliency"], torch.full((16, 24), 128 / 255))
    assert torch.equal(ImageFolder(tmp_path / "img", size=8)[0]["saliency"], torch.ones(8, 8))


def corrupt(path):
    data = path.read_bytes() if path.exists() else b""
    path.write_bytes(data[: len(data) // 3] if data else b"this is not an image")


def test_bad_files_are_skipped_counted_and_never_crash_an_epoch(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    for i in range(7):
        Image.new("RGB", (12, 12), (30 * i, 0, 0)).save(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "img" / "2.jpg").write_bytes(b"garbage, not a jpeg")
    corrupt(tmp_path / "img" / "5.jpg")  # truncated
    (tmp_path / "img" / "6.jpg").write_bytes(b"")
    ds = ImageFolder(tmp_path / "img", size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as -W ignore: the lines are not warnings
        batches = list(DataLoader(ds, batch_size=3, num_workers=0))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        f"skipping unreadable {tmp_path / 'img' / name}" for name in ("2.jpg", "5.jpg", "6.jpg")
    ]
    indices = torch.cat([b["index"] for b in batches]).tolist()
    assert sum(len(b["img"]) for b in batches) == 7  # every slot filled
    assert ds.skipped == 3 and ds.bad_indices == {2, 5, 6}
    assert not set(indices) & {2, 5, 6}
    assert indices[2] == 3 and indices[5:] == [0, 0]  # next readable, cyclically
    list(DataLoader(ds, batch_size=3))
    assert capsys.readouterr().err == ""  # a second epoch passes known-bad files silently
    assert ds.skipped == 3


def test_missing_files_are_skipped_in_annotated_datasets(tmp_path):
    write_celeba(tmp_path, n=4)
    (tmp_path / "img_celeba" / "000002.jpg").unlink()
    corrupt(tmp_path / "sal" / "000003.png")
    ds = CelebAWild(tmp_path, split="all", size=32, saliency_dir=tmp_path / "sal")
    names = [b["name"][0] for b in DataLoader(ds, batch_size=1)]
    assert names == ["000001.jpg", "000004.jpg", "000004.jpg", "000004.jpg"]
    assert ds.skipped == 2


def test_skipping_works_in_worker_processes(tmp_path, capfd):
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "1.png").write_bytes(b"broken")
    ds = ImageFolder(tmp_path / "img", size=8)
    batches = list(DataLoader(ds, batch_size=2, num_workers=1))
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 2, 2, 3]
    assert "skipping unreadable" in capfd.readouterr().err  # the worker's own line


def test_an_entirely_unreadable_dataset_raises_clearly(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(RuntimeError, match="none of the 1"):
        ImageFolder(tmp_path / "img")[0]


@pytest.mark.parametrize("box, out", [((1, 2, 11, 10), (32, 40)), ((-6, -3, 30, 33), (9, 9))])
def test_point_transform_matches_pil_resampling(box, out):
    """The centroid of a resized point mass lands exactly where CropResize maps the point,
    for upscaling, downscaling and a crop reaching outside the image."""
    from scops_fast.data.imagefiles import CropResize

    a = np.zeros((10, 12), np.float32)
    a[6, 3] = 1.0
    tf = CropResize(box, (12, 10), out)
    res = np.asarray(tf.image(Image.fromarray(a, mode="F")), dtype=np.float64)
    ys, xs = np.mgrid[: out[0], : out[1]]
    centroid = [(res * xs).sum() / res.sum(), (res * ys).sum() / res.sum()]
    assert centroid == pytest.approx(tf.points(np.array([3.0, 6.0])).tolist(), abs=1e-3)


def test_image_folder_resize_modes(tmp_path):
    """A 40x20 photo (w x h) made square three ways; its map follows its image."""
    from scops_fast.data.folder import resize_box

    (tmp_path / "img").mkdir()
    (tmp_path / "sal").mkdir()
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = (250, 0, 0)  # red quarter on the left, the rest green
    pixels[:, 10:] = (0, 250, 0)
    Image.fromarray(pixels).save(tmp_path / "img" / "wide.png")
    Image.new("L", (40, 20), 255).save(tmp_path / "sal" / "wide.png")

    def item(mode):
        ds = ImageFolder(tmp_path / "img", size=16, saliency_dir=tmp_path / "sal", resize=mode)
        return ds[0]

    squash, crop, box = item("squash"), item("crop"), item("letterbox")
    assert resize_box((40, 20), (16, 16), "squash") is None
    assert resize_box((40, 20), (16, 16), "crop") == (10, 0, 30, 20)
    assert resize_box((40, 20), (16, 16), "letterbox") == (0, -10, 40, 30)
    assert resize_box((20, 40), (16, 16), "letterbox") == (-10, 0, 30, 40)
    # squash: a quarter red; crop: the red quarter is cut off; letterbox: bars above and below.
    assert float(squash["img"][0, 8, 1]) > 0.9 and float(squash["img"][1, 8, 14]) > 0.9
    assert float(crop["img"][0].max()) < 0.1 and torch.equal(crop["saliency"], torch.ones(16, 16))
    assert float(box["img"][:, :3].max()) == 0.0 and float(box["img"][:, -3:].max()) == 0.0
    assert float(box["saliency"][:3].max()) == 0.0 and float(box["saliency"][8].min()) == 1.0
    assert float(box["img"][0, 8, 1]) > 0.9  # the red quarter is still there
    with pytest.raises(ValueError, match="resize: expected one of squash, letterbox, crop"):
        ImageFolder(tmp_path / "img", resize="fit")
