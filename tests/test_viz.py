"""Pictures without matplotlib: overlays, centres, curves, the HTML report."""

import math

import torch
from PIL import Image

from scops_fast import viz


def blob_probs(height=20, width=30):
    """Background everywhere but part 1 on a 4x6 block at rows 2..5, cols 10..15."""
    probs = torch.zeros(1, 3, height, width)
    probs[:, 0] = 1.0
    probs[:, 0, 2:6, 10:16] = 0.0
    probs[:, 1, 2:6, 10:16] = 1.0
    return probs


def test_part_colours_distinct():
    colours = viz.part_colours(20)
    assert colours.shape == (21, 3) and colours.dtype == torch.uint8
    assert colours[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in colours.tolist()}) == 21


def test_centres_are_probability_weighted_pixel_means():
    centres = viz.part_centres(blob_probs())
    torch.testing.assert_close(centres[0, 0], torch.tensor([12.5, 3.5]))


def test_overlay_tints_parts_only():
    images = torch.full((1, 3, 20, 30), 0.5)
    out = viz.overlay_parts(images, blob_probs(), alpha=1.0)
    assert torch.equal(out[0, :, 0, 0], images[0, :, 0, 0])
    expected = viz.part_colours(2)[1].float() / 255
    torch.testing.assert_close(out[0, :, 3, 12], expected)


def test_part_grid_layout(tmp_path):
    images = torch.rand(5, 3, 20, 30)
    probs = blob_probs().expand(5, -1, -1, -1)
    path = viz.save_part_grid(tmp_path / "g.png", images, probs, columns=4, padding=2)
    with Image.open(path) as img:
        scale = math.ceil(96 / 20)
        assert img.size == (4 * (30 * scale + 2) + 2, 2 * (3 * 20 * scale + 2) + 2)
    big = viz.part_grid(torch.rand(2, 3, 100, 100), torch.rand(2, 4, 100, 100), columns=2)
    assert big.size == (2 * 102 + 2, 302 + 2)


def test_plot_curves(tmp_path):
    records = [
        {"step": s, "loss": 100.0 / s, "semantic": 0.1 * s, "lr": 0.0, "steps_per_s": 3.0}
        for s in range(1, 30)
    ]
    records.append({"step": 30, "loss": float("nan")})
    path = viz.plot_curves(tmp_path / "c.png", records, columns=2, panel_size=(300, 200))
    with Image.open(path) as img:
        assert img.size == (600, 400)  # loss, semantic, lr: 3 panels, 2 per row
        assert len(img.convert("RGB").getcolors(1 << 16)) > 3
    empty = viz.plot_curves(tmp_path / "e.png", [])
    assert Image.open(empty).size == (360, 220)


def test_report(tmp_path):
    path = viz.write_report(
        tmp_path,
        metrics={"landmarks": {"error": 0.15}, "nmi": 0.5, "name": "<demo>"},
        images={"Parts": "parts.png"},
        title="t",
    )
    text = path.read_text()
    assert path.name == "report.html"
    assert "landmarks.error" in text and "0.15" in text and "&lt;demo&gt;" in text
    assert '<img src="parts.png"' in text
