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


@pytest.mark.parametrize("variant", ["resize", "center_crop"])
def test_celeba_wild_items_are_the_originals(celeba_root, variant):
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
            item["saliency"].numpy(), f.arrays[f"{variant}.{name}.saliency"], atol=1e-6
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
