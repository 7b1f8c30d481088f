"""Pictures of a SCOPS run without matplotlib: part overlays with part centres,
loss curves, and an HTML report tying them together. Drawing uses Pillow.

    from scops_fast import viz
    viz.save_part_grid("parts.png", images, probs)      # probs from train.predict_parts
    viz.plot_curves("curves.png", viz.read_metrics(run_dir))
    viz.write_report(run_dir, metrics={...}, images={"Parts": "parts.png"})
"""

from __future__ import annotations

import colorsys
import html
import json
import math
import pathlib
import unicodedata
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from scops_fast.metrics_file import read_metrics

# Distinct, saturated colours for the first parts (then evenly spaced hues).
_BASE_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
BACKGROUND_COLOUR = (0, 0, 0)


def part_colours(num_parts: int) -> torch.Tensor:
    """(K+1, 3) uint8 colours: row 0 background (black), rows 1..K parts."""
    colours = [BACKGROUND_COLOUR, *_BASE_COLOURS[:num_parts]]
    extra = num_parts - len(_BASE_COLOURS)
    for i in range(max(0, extra)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return torch.tensor(colours, dtype=torch.uint8)


def part_labels(probs: torch.Tensor) -> torch.Tensor:
    """The arg-max part (B, H, W) of probs (B, K+1, H, W), ties to the lower index.

    max(1).indices is argmax(1) (both take the first maximum) at a fifth of its time on a CPU:
    torch's argmax over a dimension that is not the innermost took 7.6 ms for 13 x 256 x 256
    (torch 2.14), max 1.6 ms; scops-predict spent 60% of its time there."""
    return probs.max(1).indices


def label_map(probs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Colour image (B, 3, H, W) in [0, 1] of the arg-max part of probs (B, K+1, H, W)
    (`labels`: that arg-max, when already known)."""
    colours = part_colours(probs.shape[1] - 1).to(probs.device).float() / 255.0
    labels = part_labels(probs) if labels is None else labels
    return colours[labels].permute(0, 3, 1, 2)


def overlay_parts(
    images: torch.Tensor,
    probs: torch.Tensor,
    alpha: float = 0.55,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] with each pixel tinted by its arg-max part;
    background pixels are left as they are. `labels`: the arg-max (B, H, W), when known."""
    labels = part_labels(probs) if labels is None else labels
    colours = label_map(probs, labels)
    is_part = (labels[:, None] > 0).to(images.dtype)
    return images * (1 - alpha * is_part) + colours * (alpha * is_part)


def part_centres(probs: torch.Tensor) -> torch.Tensor:
    """Centre (x, y) in pixels of each part (B, K, 2): the probability-weighted mean
    pixel position (SPEC section 9, no epsilon)."""
    parts = probs[:, 1:].double()
    height, width = parts.shape[-2:]
    mass = parts.sum((2, 3)).clamp_min(1e-12)
    xs = torch.arange(width, dtype=parts.dtype, device=parts.device)
    ys = torch.arange(height, dtype=parts.dtype, device=parts.device)
    cx = (parts.sum(2) * xs).sum(-1) / mass
    cy = (parts.sum(3) * ys).sum(-1) / mass
    return torch.stack((cx, cy), -1).float()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image."""
    array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def drawable(text: str) -> str:
    """`text` in the characters Pillow's built-in font has (ASCII), which draws every other
    one as the same empty box: accents dropped (ñandú_é.png -> nandu_e.png), any other
    character as "?". The same on every machine, unlike a system font."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in plain)


def draw_centres(image: Image.Image, centres, colours, radius: int | None = None) -> Image.Image:
    """Circles at `centres` (K, 2) pixel (x, y), filled in each part's colour and
    ringed in white and black so they show on any background."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    r = radius or max(2, round(min(image.size) / 40))
    for (x, y), colour in zip(centres.tolist(), colours.tolist(), strict=True):
        box = (x - r, y - r, x + r, y + r)
        draw.ellipse(box, fill=tuple(colour), outline=(255, 255, 255), width=max(1, r // 3))
        draw.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), outline=(0, 0, 0))
    return image


# Colours of a data set's true parts: a set of their own, because true part k and found
# part k are unrelated (the model's parts come in no particular order), and shared colours
# would suggest a match that is not there.
_TRUTH_COLOURS = (
    (27, 158, 119),
    (217, 95, 2),
    (117, 112, 179),
    (231, 41, 138),
    (102, 166, 30),
    (230, 171, 2),
    (150, 150, 150),
    (166, 206, 227),
    (251, 154, 153),
    (178, 223, 138),
    (202, 178, 214),
    (255, 255, 153),
)


def truth_colours(num_parts: int) -> torch.Tensor:
    """(N+1, 3) uint8 colours of a data set's true parts: row 0 background (black, as for
    the found parts), rows 1..N the true parts, in colours of their own."""
    colours = [BACKGROUND_COLOUR, *_TRUTH_COLOURS[:num_parts]]
    for i in range(max(0, num_parts - len(_TRUTH_COLOURS))):
        r, g, b = colorsys.hsv_to_rgb((0.31 + i * 0.618034) % 1.0, 0.45, 0.8)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return torch.tensor(colours, dtype=torch.uint8)


def won_parts(probs: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: whether part k is the arg-max of at least one pixel of image b. A part
    that wins no pixel has no area, so it has no centre worth drawing."""
    labels = probs.argmax(1).flatten(1)
    won = torch.zeros(probs.shape[0], probs.shape[1], dtype=torch.bool, device=probs.device)
    won.scatter_(1, labels, True)
    return won[:, 1:]


def part_probability_map(images: torch.Tensor, probs: torch.Tensor, part: int) -> torch.Tensor:
    """(B, 3, H, W): part `part`'s probability drawn in its colour over a dimmed grey copy
    of the images (the copy shows where on the object the probability lies)."""
    colour = part_colours(probs.shape[1] - 1)[part].to(images.device).float() / 255.0
    grey = images.mean(1, keepdim=True).expand_as(images) * 0.35
    p = probs[:, part : part + 1].clamp(0, 1)
    return grey * (1 - p) + colour.view(1, 3, 1, 1) * p


def _text_height(font) -> int:
    box = font.getbbox("Ag")
    return box[3] - box[1]


def _legend_items(draw, items, font, x0: int, y0: int, width: int, *, draw_it: bool) -> int:
    """Lays out (label, colour) swatches left to right, wrapping at `width`; draws them when
    `draw_it`; returns the height used."""
    swatch, gap = 14, 14
    line_h = max(swatch, _text_height(font)) + 8
    x, y = x0, y0
    for label, colour in items:
        if colour is None:  # a heading: starts a new line unless the line is empty
            if x != x0:
                x, y = x0, y + line_h
            if draw_it:
                draw.text((x, y + swatch // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
            x += round(draw.textlength(label, font=font)) + gap
            continue
        item_w = swatch + 5 + round(draw.textlength(label, font=font)) + gap
        if x + item_w > x0 + width and x != x0:
            x, y = x0, y + line_h
        if draw_it:
            draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(colour), outline=(90, 90, 90))
            draw.text(
                (x + swatch + 5, y + swatch // 2), label, fill=(0, 0, 0), font=font, anchor="lm"
            )
        x += item_w
    return y + line_h - y0


def _shorten(text: str, width: int, draw, font) -> str:
    """`text`, cut in the middle with an ellipsis to fit `width` pixels (file names differ
    most at their ends)."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        short = text[: keep // 2] + "\u2026" + text[len(text) - (keep - keep // 2) :]
        if draw.textlength(short, font=font) <= width:
            return short
    return "\u2026"


def true_parts(items: Sequence[Mapping], size) -> torch.Tensor | None:
    """(B, H, W) true part labels of data set items, for `part_grid(truth=...)`: None unless
    every item has a `parts` map of the images' size (H, W) (SyntheticParts has them; a
    folder of images has none, CelebA only landmarks)."""
    maps = [item.get("parts") for item in items]
    if not maps or any(m is None for m in maps):
        return None
    maps = [torch.as_tensor(m) for m in maps]
    if any(m.shape != tuple(size) for m in maps):
        return None
    return torch.stack(maps).long()


def part_grid(
    images: torch.Tensor,
    probs: torch.Tensor,
    *,
    truth: torch.Tensor | None = None,
    truth_names: Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
    columns: int = 8,
    show_centres: bool = True,
    part_maps: bool = True,
    legend: bool = True,
    title: str | None = None,
    padding: int = 2,
    min_tile: int = 96,
) -> Image.Image:
    """A labelled sheet of the parts found on `images`, one column per image and one row per
    view, each row named on the left:

    - the input image;
    - the image tinted by its arg-max part, each part that wins a pixel marked at its centre;
    - the arg-max parts alone (black: background);
    - the data set's true parts, when `truth` (B, H, W) integer labels (0 background) is given;
    - each part's probability (`part_maps`).

    `captions` (one per image, e.g. file names) go above the columns, shortened to fit.
    More than `columns` images continue in a second block below. A legend (`legend`) names
    the colours: background, part 1..K, and the true parts (`truth_names`, else numbers).
    Images smaller than `min_tile` pixels are enlarged by an integer factor (nearest)."""
    images, probs = images.detach().cpu().float(), probs.detach().cpu().float()
    if truth is not None:
        truth = torch.as_tensor(truth).detach().cpu().long()
        if truth.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(
                f"truth: expected (B, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                f"got {tuple(truth.shape)}"
            )
    if min(images.shape[-2:]) < min_tile:
        # Small images are enlarged so that parts and centre markers stay visible.
        scale = math.ceil(min_tile / min(images.shape[-2:]))
        size = (images.shape[-2] * scale, images.shape[-1] * scale)
        images = torch.nn.functional.interpolate(images, size=size, mode="nearest")
        probs = torch.nn.functional.interpolate(probs, size=size, mode="nearest")
        if truth is not None:
            truth = torch.nn.functional.interpolate(truth[:, None].float(), size=size)
            truth = truth[:, 0].round().long()
    b, _, h, w = images.shape
    num_parts = probs.shape[1] - 1
    colours = part_colours(num_parts)
    won = won_parts(probs)
    centres = part_centres(probs)
    views = [("input image", lambda: [to_pil(im) for im in images], None)]

    def overlays():
        tiles = []
        for i, overlay in enumerate(overlay_parts(images, probs)):
            tile = to_pil(overlay)
            if show_centres and won[i].any():
                tile = draw_centres(tile, centres[i][won[i]], colours[1:][won[i]])
            tiles.append(tile)
        return tiles

    views.append(("found parts" + (", centres" if show_centres else ""), overlays, None))
    views.append(("found parts (arg-max)", lambda: [to_pil(m) for m in label_map(probs)], None))
    num_truth = 0
    if truth is not None:
        num_truth = max(int(truth.max()), len(truth_names or ()))
        palette = truth_colours(num_truth).float() / 255.0
        truth_tiles = palette[truth.clamp(0, num_truth)].permute(0, 3, 1, 2)
        views.append(("true parts (data set)", lambda: [to_pil(t) for t in truth_tiles], None))
    if part_maps:
        for k in range(1, num_parts + 1):
            note = "probability" if won[:, k - 1].any() else "wins no pixel"

            def maps(k=k):
                return [to_pil(m) for m in part_probability_map(images, probs, k)]

            views.append((f"part {k}\n{note}", maps, colours[k]))

    font, title_font = _font(13), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 24 + max(
        round(probe.textlength(line, font=font))
        for label, _, _ in views
        for line in label.split("\n")
    )
    columns = max(1, min(columns, b))
    blocks = math.ceil(b / columns)
    grid_w = columns * (w + padding) + padding
    width = label_w + grid_w
    title_h = _text_height(title_font) + 14 if title else 0
    caption_h = _text_height(font) + 8 if captions else 0
    block_h = caption_h + len(views) * (h + padding) + padding
    items = []
    if legend:
        items = [("found parts:", None), ("background", colours[0].tolist())]
        items += [(f"part {k}", colours[k].tolist()) for k in range(1, num_parts + 1)]
        if truth is not None:
            tcolours = truth_colours(num_truth)
            names = list(truth_names or ())
            items.append(("true parts:", None))
            items += [
                (names[n - 1] if n <= len(names) else f"true {n}", tcolours[n].tolist())
                for n in range(1, num_truth + 1)
            ]
    legend_h = (
        _legend_items(probe, items, font, 8, 0, width - 16, draw_it=False) + 8 if items else 0
    )
    gap = 10
    height = title_h + blocks * block_h + (blocks - 1) * gap + legend_h
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 7), drawable(title), fill=(0, 0, 0), font=title_font)
    rendered = [tiles() for _, tiles, _ in views]
    for block in range(blocks):
        top = title_h + block * (block_h + gap)
        for c in range(columns if captions else 0):
            i = block * columns + c
            if i < b:
                text = _shorten(drawable(str(captions[i])), w, draw, font)
                x = label_w + padding + c * (w + padding) + w / 2
                draw.text((x, top + caption_h - 3), text, fill=(0, 0, 0), font=font, anchor="md")
        top += caption_h
        for r, (label, _, swatch) in enumerate(views):
            y0 = top + padding + r * (h + padding)
            x_text = 6
            if swatch is not None:
                draw.rectangle(
                    (x_text, y0 + h // 2 - 6, x_text + 12, y0 + h // 2 + 6),
                    fill=tuple(swatch.tolist()),
                    outline=(90, 90, 90),
                )
                x_text += 17
            draw.multiline_text(
                (x_text, y0 + h // 2), label, fill=(0, 0, 0), font=font, anchor="lm", spacing=3
            )
            for c in range(columns):
                i = block * columns + c
                if i < b:
                    sheet.paste(rendered[r][i], (label_w + padding + c * (w + padding), y0))
    if items:
        _legend_items(draw, items, font, 8, height - legend_h + 2, width - 16, draw_it=True)
    return sheet


def save_part_grid(path, images: torch.Tensor, probs: torch.Tensor, **kwargs) -> pathlib.Path:
    """Writes `part_grid(images, probs, **kwargs)` as a PNG."""
    path = pathlib.Path(path)
    part_grid(images, probs, **kwargs).save(path)
    return path


# --------------------------------------------------------------------------- curves
#: What each value the trainer logs is, for the y axis (others: their name).
AXIS_NAMES = {
    "loss": "total loss (weighted sum)",
    "concentration": "concentration loss",
    "equivariance": "equivariance loss",
    "landmark_equivariance": "landmark equivariance loss",
    "semantic": "semantic consistency loss",
    "orthonormal": "orthonormality loss",
    "lr": "learning rate",
    "skipped_images": "images skipped so far",
}
#: A positive series goes on a log axis only when it spans at least this ratio: over less
#: than a decade a log axis has too few ticks to read and a linear one shows the same shape.
LOG_MIN_RATIO = 10.0


def _nice_ticks(low: float, high: float, count: int = 4, integer: bool = False) -> list[float]:
    """About `count` ticks at multiples of 1, 2 or 5 times a power of ten (of at least 1 when
    `integer`), and at least three where such a step exists: a range just above a round
    step would otherwise get a single tick."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    steps = [m * magnitude for m in (10, 5, 2, 1, 0.5, 0.2, 0.1)]
    steps = [st for st in steps if st <= 2 * raw] or steps[-1:]
    if integer:
        steps = sorted({max(1.0, float(round(st))) for st in steps}, reverse=True)
    ticks: list[float] = []
    for step in steps:
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        ticks = [k * step for k in range(first, last + 1)]
        if len(ticks) >= 3:
            break
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    """log10 positions of ticks between 10**lo and 10**hi, as matplotlib's LogLocator with
    subs: whole decades, with 2 and 5 between them when the range spans three or fewer."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    whole = [float(e) for e in decades if lo <= e <= hi]
    if len(whole) > 3:
        return whole[:: math.ceil(len(whole) / 6)]
    return [e + math.log10(m) for e in decades for m in (1, 2, 5) if lo <= e + math.log10(m) <= hi]


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2g}"


def _fmt_log(position: float) -> str:
    """The value at log10 position `position` (1, 2 or 5 times a power of ten)."""
    value = 10**position
    exponent = math.floor(position + 1e-9)
    mantissa = round(value / 10**exponent)
    if -4 <= exponent <= 4:
        return f"{mantissa * 10.0**exponent:.{max(0, -exponent)}f}"
    return f"{mantissa}e{exponent}"


def _fmt_linear(value: float, step: float) -> str:
    """Tick labels with just the decimals that the tick step needs."""
    if value == 0:
        return "0"
    if 1e-4 <= abs(step) and abs(value) < 1e6:
        return f"{value:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"
    # Significant digits down to the step's, so that neighbouring ticks read differently.
    digits = math.floor(math.log10(abs(value))) - math.floor(math.log10(abs(step)) + 1e-9) + 1
    return f"{value:.{max(1, digits)}g}"


def _rotated_text(text: str, font, fill=(0, 0, 0)) -> Image.Image:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    label = Image.new("RGB", (right - left + 2, bottom - top + 2), (255, 255, 255))
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, fill=fill, font=font)
    return label.rotate(90, expand=True)


def y_axis(values: Sequence[float], log_scale: bool = True):
    """The y axis of a panel of `values`: (log, low, high, ticks, tick labels), with low,
    high and the ticks in axis units (log10 of the value on a log axis). A log axis only for
    positive values spanning `LOG_MIN_RATIO` or more; at least two ticks either way."""
    use_log = (
        log_scale
        and bool(values)
        and min(values) > 0
        and max(values) / min(values) >= LOG_MIN_RATIO
    )
    if not values:
        return False, 0.0, 1.0, [0.0, 1.0], ["0", "1"]
    integer = all(float(v).is_integer() for v in values)
    ys = [math.log10(v) if use_log else v for v in values]
    y_lo, y_hi = min(ys), max(ys)
    if y_hi - y_lo < 1e-12 * max(1.0, abs(y_hi)):
        # A constant: a range around it, not below 0 for a value that cannot be negative.
        # Integer steps for small counts; beyond 2^53 every float is an integer, and a
        # step of 1 would be lost in the rounding.
        half = 1.0 if y_hi == 0 or (integer and abs(y_hi) < 1e6) else 0.1 * abs(y_hi)
        y_lo, y_hi = y_lo - half, y_hi + half
        if min(values) >= 0:
            y_lo = max(y_lo, 0.0)
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    if use_log:
        ticks = _log_ticks(y_lo, y_hi)
        return True, y_lo, y_hi, ticks, [_fmt_log(t) for t in ticks]
    ticks = _nice_ticks(y_lo, y_hi, 4, integer=integer)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(ticks[0]) or 1.0
    return False, y_lo, y_hi, ticks, [_fmt_linear(t, step) for t in ticks]


def _panel(records: list[dict], key: str, size: tuple[int, int], log_scale: bool) -> Image.Image:
    width, height = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, title_font = _font(11), _font(13)
    left, right, top, bottom = 76, 12, 24, 38
    draw.text((8, 4), key, fill=(0, 0, 0), font=title_font)
    title_end = 8 + draw.textlength(key, font=title_font)
    points = [
        (r["step"], float(r[key]))
        for r in records
        if key in r and isinstance(r[key], int | float) and math.isfinite(r[key])
    ]
    box = (left, top, width - right, height - bottom)
    draw.rectangle(box, outline=(80, 80, 80))
    draw.text(
        ((box[0] + box[2]) / 2, height - 3), "training step", fill=(0, 0, 0), font=font, anchor="md"
    )
    values = [v for _, v in points]
    use_log, y_lo, y_hi, y_ticks, labels = y_axis(values, log_scale)
    y_label = _rotated_text(AXIS_NAMES.get(key, key.replace("_", " ")), font)
    if y_label.height > box[3] - box[1]:  # too long for the axis: the key is shorter
        y_label = _rotated_text(key, font)
    img.paste(y_label, (4, round((box[1] + box[3]) / 2 - y_label.height / 2)))
    if use_log:
        draw.text((title_end + 8, 6), "(log scale)", fill=(90, 90, 90), font=font)
    if not points:
        draw.text((left + 8, top + 8), "no data", fill=(120, 120, 120), font=font)
        return img
    xs = [s for s, _ in points]
    ys = [math.log10(v) if use_log else v for v in values]
    # Steps count from 0: the axis starts there unless the log starts much later.
    x_lo = 0 if min(xs) <= 0.5 * max(xs) else min(xs)
    x_hi = max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def to_px(x, y):
        px = box[0] + (x - x_lo) / (x_hi - x_lo) * (box[2] - box[0])
        py = box[3] - (y - y_lo) / (y_hi - y_lo) * (box[3] - box[1])
        return px, py

    for t, label in zip(y_ticks, labels, strict=True):
        _, py = to_px(x_lo, t)
        draw.line((box[0], py, box[2], py), fill=(225, 225, 225))
        draw.line((box[0] - 3, py, box[0], py), fill=(80, 80, 80))
        draw.text((box[0] - 5, py), label, fill=(60, 60, 60), font=font, anchor="rm")
    for t in _nice_ticks(x_lo, x_hi, integer=True):
        px, _ = to_px(t, y_lo)
        draw.line((px, box[3], px, box[3] + 3), fill=(80, 80, 80))
        draw.text((px, box[3] + 5), f"{t:g}", fill=(60, 60, 60), font=font, anchor="mt")
    line = [to_px(x, y) for x, y in zip(xs, ys, strict=True)]
    if len(line) == 1:
        x, y = line[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(31, 119, 180))
    else:
        draw.line(line, fill=(31, 119, 180), width=2, joint="curve")
    draw.text(
        (width - right, 4), f"last {_fmt(points[-1][1])}", fill=(90, 90, 90), font=font, anchor="ra"
    )
    return img


def plot_curves(
    path,
    records: Sequence[Mapping] | str | pathlib.Path,
    keys: Sequence[str] | None = None,
    *,
    columns: int = 3,
    panel_size: tuple[int, int] = (380, 240),
    log_scale: bool = True,
) -> pathlib.Path:
    """Small multiples, one panel per logged value against the training step, written as a
    PNG; each panel names its axes (`AXIS_NAMES` for the trainer's values).

    records: dicts with a `step` (as in metrics.jsonl), or the path of such a file
    or of a run directory. keys: what to plot (default: every numeric key but step
    and steps_per_s). With `log_scale`, positive series spanning a decade or more
    (`LOG_MIN_RATIO`) use a log axis, the others a linear one."""
    if isinstance(records, str | pathlib.Path):
        records = read_metrics(records)
    records = list(records)
    if keys is None:
        keys = []
        for r in records:
            for k, v in r.items():
                if (
                    k not in ("step", "steps_per_s")
                    and isinstance(v, int | float)
                    and k not in keys
                ):
                    keys.append(k)
    keys = list(keys) or ["loss"]
    columns = max(1, min(columns, len(keys)))
    rows = math.ceil(len(keys) / columns)
    sheet = Image.new("RGB", (columns * panel_size[0], rows * panel_size[1]), (255, 255, 255))
    for i, key in enumerate(keys):
        panel = _panel(records, key, panel_size, log_scale)
        sheet.paste(panel, ((i % columns) * panel_size[0], (i // columns) * panel_size[1]))
    path = pathlib.Path(path)
    sheet.save(path)
    return path


# --------------------------------------------------------------------------- report
def _metric_rows(metrics: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_metric_rows(value, f"{name}."))
        elif isinstance(value, float):
            rows.append((name, f"{value:.6g}"))
        else:
            rows.append((name, json.dumps(value) if not isinstance(value, str) else value))
    return rows


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _table(header: Sequence, rows: Sequence[Sequence]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [f"<td>{html.escape(_cell(row[0]))}</td>"]
        cells += [f'<td class="v">{html.escape(_cell(v))}</td>' for v in row[1:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def write_report(
    out_dir,
    *,
    metrics: Mapping | None = None,
    images: Mapping[str, str] | None = None,
    title: str = "SCOPS run",
    notes: str | None = None,
    name: str = "report.html",
    tables: Mapping[str, tuple[Sequence, Sequence[Sequence]]] | None = None,
) -> pathlib.Path:
    """`out_dir/report.html`: the given tables (caption -> (header, rows); the first
    column is a row label, the others values), a metrics table (nested dicts
    flattened to dotted names) and the given images (caption -> path relative to
    out_dir), self-contained but for those image files."""
    out_dir = pathlib.Path(out_dir)
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left}td.v{text-align:right;font-family:monospace}"
        "img{max-width:100%;border:1px solid #ddd}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    for caption, (header, rows) in (tables or {}).items():
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(_table(header, rows))
    if metrics:
        parts.append("<h2>Metrics</h2><table><tr><th>name</th><th>value</th></tr>")
        for key, value in _metric_rows(metrics):
            parts.append(
                f'<tr><td>{html.escape(key)}</td><td class="v">{html.escape(value)}</td></tr>'
            )
        parts.append("</table>")
    for caption, src in (images or {}).items():
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(f'<img src="{html.escape(str(src))}" alt="{html.escape(caption)}">')
    parts.append("</body></html>")
    path = out_dir / name
    path.write_text("\n".join(parts) + "\n")
    return path


__all__ = [
    "draw_centres",
    "label_map",
    "overlay_parts",
    "part_centres",
    "part_colours",
    "part_grid",
    "part_probability_map",
    "plot_curves",
    "read_metrics",
    "save_part_grid",
    "to_pil",
    "true_parts",
    "truth_colours",
    "won_parts",
    "y_axis",
    "write_report",
]
