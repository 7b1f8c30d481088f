"""Data sets as the original reads them, against what its dataset classes returned for the
same fake trees (tests/fixtures/original/celeba.npz)."""

import numpy as np
import pytest
import torch
from original_fixtures import load
from PIL import Image

from scops_fast.data import CelebAWild

MEAN_RGB = np.array((122.67891434, 116.66876762, 104.00698793), dtype=np.float32)


def write_tree(root, section) -> None:
    """The fixture's tree: its annotation files as text, its images and maps as PNG data."""
    for key in section.arrays:
        if not key.startswith("tree."):
            continue
        rel = key[len("tree.") :]
        if rel.endswith(".image"):
            name = rel[: -len(".image")]
            path = root / "img_celeba" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(section.arrays[key]).save(path, format="PNG")
        elif rel.endswith(".saliency"):
            stem = rel[: -len(".saliency")].rsplit(".", 1)[0]
            path = root / "Saliency_Wild" / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(section.arrays[key]).save(path)
        else:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(section.arrays[key]))


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    write_tree(root, load("celeba"))
    return root


def original_dataset(root, **kwargs):
    f = load("celeba")
    return CelebAWild(
        root,
        split="MAFL/celebA_training.txt",
        size=tuple(int(v) for v in f.arrays["size"]),
        crop=None,
        min_face_area=0.3,
        saliency_dir="Saliency_Wild",
        reader="opencv",
        **kwargs,
    )


@pytest.mark.rounding
@pytest.mark.parametrize("variant", ["resize", "center_crop"])
def test_celeba_wild_items_are_the_originals(celeba_root, variant):
    """Noise model: the 8-bit image goes through OpenCV's fixed-point resize, the same bits
    on any CPU, so it is compared exactly. The saliency map is resized in float32, whose
    result depends on OpenCV's code path: without its SIMD paths (cv2.setUseOptimized(False),
    run A of `make test-rounding`) it moves by up to 2.6e-6, so 2e-5; an 8-bit saliency
    map would be 2e-3 off, one resize straight to the output size 0.19."""
    f = load("celeba")
    ds = original_dataset(celeba_root, center_crop=variant == "center_crop")
    kept = [str(n) for n in f.arrays[f"{variant}.kept"]]
    assert ds.names == kept and ds.unfiltered == 5
    for i, name in enumerate(kept):
        item = ds[i]
        # The network's input, as the original builds it: 8-bit RGB minus the mean.
        ours = np.round(item["img"].numpy() * 255).astype(np.float32) - MEAN_RGB[:, None, None]
        np.testing.assert_array_equal(ours, f.arrays[f"{variant}.{name}.img"])
        np.testing.assert_allclose(
            item["saliency"].numpy(), f.arrays[f"{variant}.{name}.saliency"], atol=2e-5
        )
        if variant == "resize":
            lm = f.arrays[f"{variant}.{name}.landmarks"]
            np.testing.assert_array_equal(item["landmarks"].numpy(), lm)


def test_face_area_filter_needs_the_size_list(celeba_root, tmp_path):
    import shutil

    shutil.copytree(celeba_root, tmp_path / "c")
    (tmp_path / "c" / "list_imsize_celeba.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_imsize_celeba"):
        original_dataset(tmp_path / "c")


def test_pil_reader_resizes_the_whole_image_too(celeba_root):
    pil = CelebAWild(
        celeba_root,
        split="MAFL/celebA_training.txt",
        size=40,
        crop=None,
        min_face_area=0.3,
        saliency_dir="Saliency_Wild",
    )
    cv = original_dataset(celeba_root)
    assert pil.names == cv.names
    a, b = pil[0], cv[0]
    assert a["img"].shape == b["img"].shape == (3, 40, 40)
    # Two bilinear resamplers: close on a smooth image, not equal.
    assert (a["img"] - b["img"]).abs().mean() < 0.05
    assert torch.allclose(a["landmarks"], b["landmarks"], atol=1.5)


def test_bad_options_are_named(celeba_root):
    with pytest.raises(ValueError, match="crop"):
        CelebAWild(celeba_root, crop="box")
    with pytest.raises(ValueError, match="reader"):
        CelebAWild(celeba_root, reader="cv3")
    with pytest.raises(ValueError, match="center_crop"):
        CelebAWild(celeba_root, center_crop=True)
    with pytest.raises(ValueError, match="split"):
        CelebAWild(celeba_root, split="MAFL/missing.txt")


def write_cub(tmp_path) -> tuple:
    """The fixture's CUB images (PNG data) and CMR cache (.mat, written with scipy)."""
    import scipy.io

    f = load("cub")
    root, cache = tmp_path / "CUB_200_2011", tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    rels = [str(r) for r in f.arrays["tree.rel_paths"]]
    images = np.zeros(len(rels), dtype=[(k, "O") for k in ("rel_path", "bbox", "parts", "mask")])
    for i, rel in enumerate(rels):
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(f.arrays[f"tree.{rel}.image"]).save(path, format="PNG")
        x1, y1, x2, y2 = f.arrays[f"tree.{rel}.bbox"]
        box = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
        images[i] = (rel, box, f.arrays[f"tree.{rel}.parts"], f.arrays[f"tree.{rel}.mask"])
    scipy.io.savemat(str(cache / "data" / "test_cub_cleaned.mat"), {"images": images})
    return root, cache, rels


@pytest.mark.rounding
def test_cub_items_are_the_originals(tmp_path, monkeypatch):
    """Noise model: the crop is resized in float64 (OpenCV), then scaled in float32: OpenCV's
    plain code path (run A of `make test-rounding`) passes too; 1e-4 of 255 levels."""
    from scops_fast.data.cub_original import CUBOriginal

    f = load("cub")
    root, cache, rels = write_cub(tmp_path)
    size = int(f.arrays["size"])
    ds = CUBOriginal(root, cache, split="test", size=size)
    monkeypatch.setattr(ds, "jitter_draws", lambda i: f.arrays[f"{rels[i]}.draws"])
    assert len(ds) == 4
    for i, rel in enumerate(rels):
        item = ds[i]
        assert item["name"] == rel
        # The network's input as the original computes it, in float32.
        ours = item["img"].numpy() * np.float32(255.0) - MEAN_RGB[:, None, None]
        np.testing.assert_allclose(ours, f.arrays[f"{rel}.img"], atol=1e-4)
        np.testing.assert_allclose(item["mask"].numpy(), f.arrays[f"{rel}.mask"], atol=1e-6)
        kp = f.arrays[f"{rel}.kp"]  # x, y in [-1, 1] (0 where not visible), visible
        visible = kp[:, 2] > 0
        assert (item["visible"].numpy() == visible).all()
        norm = 2 * item["landmarks"].numpy() / size - 1
        np.testing.assert_allclose(norm[visible], kp[visible, :2], atol=1e-6)
        assert np.isnan(item["landmarks"].numpy()[~visible]).all()


def test_cub_subsets_and_repeatable_jitter(tmp_path):
    from scops_fast.data.cub_original import SCOPS_CUB_SUBSETS, CUBOriginal

    root, cache, _ = write_cub(tmp_path)
    ds = CUBOriginal(root, cache, split="test", size=32, classes=SCOPS_CUB_SUBSETS[2])
    assert [r["rel_path"][:3] for r in ds.records] == ["002"]
    assert torch.equal(ds[0]["img"], ds[0]["img"])  # seeded per item
    still = CUBOriginal(root, cache, split="test", size=32, bbox_jitter=0.0, seed=1)
    other = CUBOriginal(root, cache, split="test", size=32, bbox_jitter=0.0, seed=2)
    assert torch.equal(still[0]["img"], other[0]["img"])
