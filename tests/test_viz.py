"""Pictures without matplotlib: overlays, centres, curves, the HTML report."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import hang_guard
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


def tile(sheet, row, column, size, columns, padding=2, title_h=0):
    """The tile of `row`, `column` of a part_grid sheet without legend: the tiles are
    right-aligned, after the column of row names."""
    x = sheet.width - (columns - column) * (size[1] + padding)
    y = title_h + padding + row * (size[0] + padding)
    return sheet.crop((x, y, x + size[1], y + size[0]))


def colour_pixels(image, colour) -> int:
    return sum(n for n, c in image.convert("RGB").getcolors(1 << 20) if c == tuple(colour))


def test_part_grid_rows_and_blocks(tmp_path):
    images = torch.rand(5, 3, 20, 30)
    probs = blob_probs().expand(5, -1, -1, -1)
    path = viz.save_part_grid(
        tmp_path / "g.png", images, probs, columns=4, part_maps=False, legend=False
    )
    scale = math.ceil(96 / 20)
    with Image.open(path) as img:
        # 5 images in rows of 4: two blocks of three rows (image, overlay, arg-max), 10 px apart.
        block = 3 * (20 * scale + 2) + 2
        assert img.height == 2 * block + 10
        first = tile(img, 0, 0, (20 * scale, 30 * scale), 4)
        enlarged = torch.nn.functional.interpolate(images[:1], scale_factor=scale)
        assert first.tobytes() == viz.to_pil(enlarged[0]).tobytes()
    # One row more per part map, and one for the true parts.
    truth = torch.zeros(5, 20, 30, dtype=torch.long)
    rows = viz.part_grid(images, probs, columns=5, legend=False).height
    with_truth = viz.part_grid(images, probs, truth=truth, columns=5, legend=False).height
    assert rows == (3 + 2) * (20 * scale + 2) + 2
    assert with_truth == rows + 20 * scale + 2


def test_captions_outside_the_fonts_characters_are_drawn_in_ascii():
    """Pillow's built-in font draws ñ, é and 名 as the same empty box: they are drawn as
    n, e and ? instead, so that a caption stays readable."""
    assert viz.drawable("ñandú_é/名前.png") == "nandu_e/??.png"
    images, probs = torch.rand(2, 3, 20, 30), blob_probs().expand(2, -1, -1, -1)

    def sheet(captions, title):
        grid = viz.part_grid(images, probs, captions=captions, title=title, legend=False)
        return grid.tobytes()

    drawn = sheet(["ñandú_é.png", "名.png"], "photos/ñ")
    assert drawn == sheet(["nandu_e.png", "?.png"], "photos/n")
    assert drawn != sheet(["nandu_e.png", "x.png"], "photos/n")


def test_part_grid_names_its_rows_and_its_colours():
    images = torch.full((2, 3, 100, 100), 0.5)
    probs = torch.rand(2, 5, 100, 100).softmax(1)
    sheet = viz.part_grid(images, probs, columns=2, legend=False)
    label_w = sheet.width - 2 * 102 - 2
    assert label_w > 60
    for row in range(3 + 4):  # image, overlay, arg-max, 4 part maps
        y = 2 + row * 102
        names = sheet.crop((0, y, label_w, y + 100)).convert("L")
        assert names.getextrema()[0] < 80, f"row {row} has no name"
    with_legend = viz.part_grid(images, probs, columns=2)
    legend = with_legend.crop((0, sheet.height, with_legend.width, with_legend.height))
    for colour in viz.part_colours(4).tolist():  # background and parts 1..4
        assert colour_pixels(legend, colour) >= 100, colour


def test_part_grid_true_parts_row_and_legend():
    images = torch.rand(2, 3, 100, 100)
    probs = torch.rand(2, 4, 100, 100).softmax(1)
    truth = torch.zeros(2, 100, 100, dtype=torch.long)
    truth[:, 10:40, 10:40] = 1
    truth[:, 50:90, 20:80] = 2
    names = ["head", "body"]
    sheet = viz.part_grid(images, probs, truth=truth, truth_names=names, part_maps=False)
    plain = viz.part_grid(images, probs, truth=truth, part_maps=False, legend=False)
    truth_tile = tile(plain, 3, 1, (100, 100), 2)
    colours = viz.truth_colours(2)
    expected = viz.to_pil(colours.float()[truth[1]].permute(2, 0, 1) / 255)
    assert truth_tile.tobytes() == expected.tobytes()
    # True part k and found part k are different things: different colours.
    assert not set(map(tuple, colours[1:].tolist())) & set(map(tuple, viz.part_colours(3).tolist()))
    legend = sheet.crop((0, plain.height, sheet.width, sheet.height))
    assert all(colour_pixels(legend, c) >= 100 for c in colours[1:].tolist())


def test_empty_parts_get_no_centre():
    images = torch.full((1, 3, 100, 100), 0.5)
    logits = torch.zeros(1, 4, 100, 100)
    logits[:, 0] = 1.0
    logits[:, 1, 10:40, 10:40] = 5.0  # part 1 wins a square
    logits[:, 2, 60:90, 60:90] = 0.5  # part 2 has some probability but wins no pixel
    logits[:, 3] = -5.0  # part 3: almost no probability anywhere
    probs = logits.softmax(1)
    assert viz.won_parts(probs).tolist() == [[True, False, False]]
    colours = viz.part_colours(3).tolist()

    def overlay(p):
        sheet = viz.part_grid(images, p, part_maps=False, legend=False)
        return tile(sheet, 1, 0, (100, 100), 1)

    shown = overlay(probs)
    assert colour_pixels(shown, colours[1]) > 0  # part 1's centre marker
    assert colour_pixels(shown, colours[2]) == 0 and colour_pixels(shown, colours[3]) == 0
    # The check can fail: once part 2 wins a pixel, its centre is drawn.
    logits[:, 2, 75, 75] = 10.0
    assert colour_pixels(overlay(logits.softmax(1)), colours[2]) > 0
    names = viz.part_grid(images, probs, legend=False)
    assert names.height == (3 + 3) * 102 + 2


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
        panel = img.convert("L").crop((0, 0, 300, 200))
        # Axis names: a rotated one left of the tick labels, "training step" under the axis.
        assert panel.crop((0, 60, 20, 140)).getextrema()[0] < 80
        assert panel.crop((100, 186, 250, 200)).getextrema()[0] < 80
    empty = viz.plot_curves(tmp_path / "e.png", [])
    assert Image.open(empty).size == (380, 240)


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([3.6, 2.0, 1.0], False),  # less than a decade: linear
        ([0.5, 0.45, 0.4], False),
        ([0.0085, 0.001068], False),  # just above a round step: still three ticks
        ([0.02, 0.001, 2e-4], True),
        ([1e-6, 1e-8, 1e-9], True),
        ([100.0, 1.0], True),
        ([0.02, 0.02], False),  # a constant
        ([0, 0, 0], False),
        ([3, 3, 7], False),
        ([1.21e-7, 1.23e-7], False),
        ([-2.0, 3.0], False),
        ([2.386232934295167e16], False),  # a diverged loss, logged once: an integer float
    ],
)
def test_y_axis_scale_and_ticks(values, log):
    use_log, low, high, ticks, labels = viz.y_axis(values)
    assert use_log == log
    assert len(ticks) >= (2 if values == [0, 0, 0] else 3), labels
    assert len(set(labels)) == len(labels), labels  # neighbouring ticks read differently
    assert all(low <= t <= high for t in ticks)
    shown = [math.log10(v) if log else v for v in values]
    assert low <= min(shown) and max(shown) <= high
    if log:
        assert [float(label) for label in labels] == pytest.approx([10**t for t in ticks])
    if not log and all(float(v).is_integer() for v in values):
        assert all(float(t).is_integer() for t in ticks)


def test_viz_does_not_import_the_trainer():
    code = "import sys, scops_fast.viz; print('scops_fast.train' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=hang_guard(120)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


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
