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
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from scops_fast.train.progress import read_metrics

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


def label_map(probs: torch.Tensor) -> torch.Tensor:
    """Colour image (B, 3, H, W) in [0, 1] of the arg-max part of probs (B, K+1, H, W)."""
    colours = part_colours(probs.shape[1] - 1).to(probs.device).float() / 255.0
    return colours[probs.argmax(1)].permute(0, 3, 1, 2)


def overlay_parts(images: torch.Tensor, probs: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] with each pixel tinted by its arg-max part;
    background pixels are left as they are."""
    colours = label_map(probs)
    is_part = (probs.argmax(1, keepdim=True) > 0).to(images.dtype)
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


def part_grid(
    images: torch.Tensor,
    probs: torch.Tensor,
    *,
    columns: int = 8,
    show_centres: bool = True,
    padding: int = 2,
    min_tile: int = 96,
) -> Image.Image:
    """One tile per image: the image above its part overlay (with centres) above the
    arg-max label map; tiles in rows of `columns`. Images smaller than `min_tile`
    pixels are enlarged by an integer factor (nearest neighbour)."""
    images, probs = images.detach().cpu().float(), probs.detach().cpu().float()
    if min(images.shape[-2:]) < min_tile:
        # Small images are enlarged so that parts and centre markers stay visible.
        scale = math.ceil(min_tile / min(images.shape[-2:]))
        size = (images.shape[-2] * scale, images.shape[-1] * scale)
        images = torch.nn.functional.interpolate(images, size=size, mode="nearest")
        probs = torch.nn.functional.interpolate(probs, size=size, mode="nearest")
    b, _, h, w = images.shape
    overlays, labels = overlay_parts(images, probs), label_map(probs)
    colours = part_colours(probs.shape[1] - 1)[1:]
    centres = part_centres(probs)
    columns = max(1, min(columns, b))
    rows = math.ceil(b / columns)
    tile_w, tile_h = w + padding, 3 * h + padding
    sheet = Image.new("RGB", (columns * tile_w + padding, rows * tile_h + padding), (255, 255, 255))
    for i in range(b):
        x0 = padding + (i % columns) * tile_w
        y0 = padding + (i // columns) * tile_h
        overlay = to_pil(overlays[i])
        if show_centres:
            overlay = draw_centres(overlay, centres[i], colours)
        sheet.paste(to_pil(images[i]), (x0, y0))
        sheet.paste(overlay, (x0, y0 + h))
        sheet.paste(to_pil(labels[i]), (x0, y0 + 2 * h))
    return sheet


def save_part_grid(path, images: torch.Tensor, probs: torch.Tensor, **kwargs) -> pathlib.Path:
    """Writes `part_grid(images, probs, **kwargs)` as a PNG."""
    path = pathlib.Path(path)
    part_grid(images, probs, **kwargs).save(path)
    return path


# --------------------------------------------------------------------------- curves
def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """log10 positions of ticks between 10**lo and 10**hi: whole decades when the
    range spans two or more, else 1-2-5 values, else linear ticks."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    whole = [float(e) for e in decades if lo <= e <= hi]
    if len(whole) >= 2:
        return whole[:: math.ceil(len(whole) / 6)]
    fine = [e + math.log10(m) for e in decades for m in (1, 2, 5) if lo <= e + math.log10(m) <= hi]
    if len(fine) >= 2:
        return fine
    return [math.log10(t) for t in _nice_ticks(10**lo, 10**hi, 3) if t > 0]


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2g}"


def _panel(records: list[dict], key: str, size: tuple[int, int], log_scale: bool) -> Image.Image:
    width, height = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, title_font = _font(11), _font(13)
    left, right, top, bottom = 58, 12, 24, 30
    draw.text((left, 4), key, fill=(0, 0, 0), font=title_font)
    points = [
        (r["step"], float(r[key]))
        for r in records
        if key in r and isinstance(r[key], int | float) and math.isfinite(r[key])
    ]
    box = (left, top, width - right, height - bottom)
    draw.rectangle(box, outline=(80, 80, 80))
    if not points:
        draw.text((left + 8, top + 8), "no data", fill=(120, 120, 120), font=font)
        return img
    use_log = log_scale and all(v > 0 for _, v in points)
    transform = math.log10 if use_log else (lambda v: v)
    xs = [s for s, _ in points]
    ys = [transform(v) for _, v in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(x, y):
        px = box[0] + (x - x_lo) / (x_hi - x_lo) * (box[2] - box[0])
        py = box[3] - (y - y_lo) / (y_hi - y_lo) * (box[3] - box[1])
        return px, py

    if use_log:
        y_ticks = _log_ticks(y_lo, y_hi)
    else:
        y_ticks = _nice_ticks(y_lo, y_hi)
    for t in y_ticks:
        _, py = to_px(x_lo, t)
        draw.line((box[0], py, box[2], py), fill=(225, 225, 225))
        label = _fmt(10**t) if use_log else _fmt(t)
        draw.text((box[0] - 4, py), label, fill=(60, 60, 60), font=font, anchor="rm")
    for t in _nice_ticks(x_lo, x_hi):
        px, _ = to_px(t, y_lo)
        draw.line((px, box[3], px, box[3] + 3), fill=(80, 80, 80))
        draw.text((px, box[3] + 5), f"{t:g}", fill=(60, 60, 60), font=font, anchor="mt")
    line = [to_px(x, y) for x, y in zip(xs, ys, strict=True)]
    if len(line) == 1:
        x, y = line[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(31, 119, 180))
    else:
        draw.line(line, fill=(31, 119, 180), width=2, joint="curve")
    last = f"last {_fmt(points[-1][1])}" + (" (log scale)" if use_log else "")
    draw.text((width - right, 4), last, fill=(90, 90, 90), font=font, anchor="ra")
    return img


def plot_curves(
    path,
    records: Sequence[Mapping] | str | pathlib.Path,
    keys: Sequence[str] | None = None,
    *,
    columns: int = 3,
    panel_size: tuple[int, int] = (360, 220),
    log_scale: bool = True,
) -> pathlib.Path:
    """Small multiples, one panel per logged value against `step`, written as a PNG.

    records: dicts with a `step` (as in metrics.jsonl), or the path of such a file
    or of a run directory. keys: what to plot (default: every numeric key but step
    and steps_per_s). Positive series use a log axis when `log_scale`."""
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
    "plot_curves",
    "read_metrics",
    "save_part_grid",
    "to_pil",
    "write_report",
]
