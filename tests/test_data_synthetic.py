import pytest
import torch
from torch.utils.data import DataLoader

from scops_fast.data import PART_NAMES, SyntheticParts


@pytest.fixture(scope="module")
def items():
    ds = SyntheticParts(24, size=96, seed=3)
    return [ds[i] for i in range(len(ds))]


def test_item_layout_and_ranges():
    for size in (64, (48, 72)):
        ds = SyntheticParts(3, size=size, seed=0)
        h, w = (size, size) if isinstance(size, int) else size
        it = ds[1]
        assert set(it) == {"img", "parts", "fg", "saliency", "landmarks", "visible", "index"}
        assert it["img"].shape == (3, h, w) and it["img"].dtype == torch.float32
        assert 0.0 <= float(it["img"].min()) and float(it["img"].max()) <= 1.0
        assert it["parts"].shape == (h, w) and it["parts"].dtype == torch.int64
        assert int(it["parts"].min()) >= 0 and int(it["parts"].max()) <= len(PART_NAMES)
        assert it["fg"].dtype == torch.bool and torch.equal(it["fg"], it["parts"] > 0)
        assert it["saliency"].shape == (h, w) and it["saliency"].dtype == torch.float32
        assert 0.0 <= float(it["saliency"].min()) and float(it["saliency"].max()) <= 1.0
        assert it["landmarks"].shape == (len(PART_NAMES), 2)
        assert it["landmarks"].dtype == torch.float32
        assert it["visible"].shape == (len(PART_NAMES),) and it["index"] == 1
    assert len(ds) == 3
    with pytest.raises(IndexError):
        ds[3]


def test_items_depend_only_on_seed_and_index():
    a, b = SyntheticParts(5, size=48, seed=7), SyntheticParts(500, size=48, seed=7)
    for key in ("img", "parts", "saliency", "landmarks"):
        assert torch.equal(a[4][key], b[4][key]), key
        assert torch.equal(a[4][key], a[-1][key]), key
    assert not torch.equal(a[3]["img"], a[4]["img"])
    assert not torch.equal(a[4]["img"], SyntheticParts(5, size=48, seed=8)[4]["img"])


def test_every_part_is_present_and_not_tiny(items):
    counts = torch.stack([torch.bincount(it["parts"].flatten(), minlength=10) for it in items])
    visible = torch.stack([it["visible"] for it in items])
    assert torch.equal(visible, counts[:, 1:] > 0)
    assert visible.float().mean(0).min() >= 0.8  # each part in at least 80% of the images
    pixels = 96 * 96
    assert counts[:, 1:].float().median(0).values.min() >= 0.002 * pixels  # eyes ~ 20+ px at 96
    fg_fraction = counts[:, 1:].sum(1).float() / pixels
    assert 0.2 <= float(fg_fraction.mean()) <= 0.6


def test_landmarks_are_part_centres_with_eyes_first(items):
    for it in items:
        for p in (0, 1, 2):  # eyes and nose are drawn last: never occluded
            ys, xs = (it["parts"] == p + 1).nonzero(as_tuple=True)
            if len(xs) < 10 or not it["visible"][p]:
                continue
            centroid = torch.stack([xs.float().mean(), ys.float().mean()])
            assert torch.dist(centroid, it["landmarks"][p]) < 1.5, (it["index"], PART_NAMES[p])
    upright = SyntheticParts(10, size=64, seed=1, rotation=0.0)
    for i in range(10):
        lm = upright[i]["landmarks"]
        assert lm[0, 0] < lm[1, 0]  # left eye on the image's left
        assert abs(float(lm[0, 1] - lm[1, 1])) < 6  # roughly level
        assert lm[3, 1] < lm[8, 1]  # head above body


def test_parts_have_consistent_distinct_colours(items):
    """Per-image mean colour of each part is closest to that part's mean over all images."""
    means = torch.full((len(items), len(PART_NAMES), 3), float("nan"))
    for n, it in enumerate(items):
        for p in range(len(PART_NAMES)):
            m = it["parts"] == p + 1
            if m.sum() >= 10:
                means[n, p] = it["img"][:, m].mean(1)
    centre = means.nanmean(0)
    ok = ~means.isnan().any(-1)
    nearest = torch.cdist(means[ok], centre).argmin(-1)
    truth = torch.arange(len(PART_NAMES)).expand(len(items), -1)[ok]
    assert torch.equal(nearest, truth)


def test_saliency_is_a_degraded_foreground(items):
    ious = []
    for it in items:
        sal = it["saliency"] > 0.5
        ious.append(float((sal & it["fg"]).sum() / (sal | it["fg"]).sum()))
        assert not torch.equal(it["saliency"], it["fg"].float())
    ious = torch.tensor(ious)
    assert 0.6 < float(ious.mean()) < 0.97
    fg_mean = torch.stack([it["saliency"][it["fg"]].mean() for it in items]).mean()
    bg_mean = torch.stack([it["saliency"][~it["fg"]].mean() for it in items]).mean()
    assert fg_mean > 0.6 and bg_mean < 0.15


def test_pose_articulation_and_deformation_vary_the_layout():
    rigid = SyntheticParts(
        4,
        size=64,
        seed=2,
        rotation=0,
        scale=(0.8, 0.8),
        translation=0,
        articulation=0,
        deformation=0,
    )
    deformed = SyntheticParts(
        4,
        size=64,
        seed=2,
        rotation=0,
        scale=(0.8, 0.8),
        translation=0,
        articulation=0,
    )
    # Without any geometric variation the parts map is the same in every image.
    assert all(torch.equal(rigid[0]["parts"], rigid[i]["parts"]) for i in range(1, 4))
    assert not torch.equal(rigid[0]["parts"], deformed[0]["parts"])
    moved = SyntheticParts(4, size=64, seed=2)
    spread = torch.stack([moved[i]["landmarks"] for i in range(4)]).std(0).mean()
    assert spread > 2.0


def test_restores_threads_and_collates():
    # Speed is not asserted here (a shared machine makes any bound flaky); the
    # generator pins itself to one thread per item and must give the setting back.
    ds = SyntheticParts(64, size=128, seed=0)
    threads = torch.get_num_threads()
    for i in range(11):
        ds[i]
    assert torch.get_num_threads() == threads
    other = SyntheticParts(64, size=128, seed=0, single_thread=False)
    assert torch.equal(ds[5]["img"], other[5]["img"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["img"].shape == (4, 3, 128, 128) and batch["landmarks"].shape == (4, 9, 2)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        SyntheticParts(2, scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="size"):
        SyntheticParts(2, size=4)
    with pytest.raises(ValueError, match="clutter"):
        SyntheticParts(2, clutter=(5, 2))
