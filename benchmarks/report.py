"""benchmarks/RESULTS.md and its plots, from saved benchmark results only.

    python benchmarks/report.py [--losses results/losses.json ...] [--train results/train.json]
        [--largest results/largest.json] [--out benchmarks/RESULTS.md]

Inputs: pytest-benchmark JSON files of bench_losses.py (any number: e.g. the default
sizes and the heavy ones) and of bench_train_step.py, and the JSON written by
`train_step.py largest`. Every number in the output is read from them or computed
from them (ratios, affine fits); fitted values are marked as extrapolated. Plots
(Pillow, no matplotlib) go next to the output: train_time_vs_resolution.png,
train_memory_vs_batch.png, ops_time_vs_resolution.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import original_step  # noqa: E402
import summarize  # noqa: E402
import train_step  # noqa: E402

from scops_fast.viz import _font, _nice_ticks  # noqa: E402

COLOURS = {
    "reference": (214, 39, 40),
    "eager": (214, 39, 40),
    "cpp": (31, 119, 180),
    "compile": (44, 160, 44),
}
EXTRA = [(148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]
CELEBA = (256, 6)  # SPEC section 8: 256x256, batch 6
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]
SHORT = {
    "concentration_loss": "concentration",
    "batch_get_centers": "centers",
    "semantic_consistency_loss": "semantic dense",
    "semantic_consistency_loss_lowres": "semantic lowres",
    "tps_warp": "tps_warp",
    "equivariance_losses": "equivariance",
}
# Loss-op sizes the resolution plot takes its points from, first found first.
PLOT_SIZES = ("celeba", "dense2", "b16", "b32", "hires512")


def load(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- plotting
def colour(name: str, i: int):
    return COLOURS.get(name, EXTRA[i % len(EXTRA)])


def line_plot(path, *args, **kwargs):
    """plot(...) written to `path`."""
    plot(*args, **kwargs).save(path)


def side_by_side(path, images) -> None:
    sheet = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        sheet.paste(image, (x, 0))
        x += image.width
    sheet.save(path)


def plot(
    title,
    series,
    *,
    xlabel,
    ylabel,
    log_x=False,
    log_y=False,
    hline=None,
    size=(720, 440),
    xticks=None,
    legend_width=190,
):
    """series: [(label, colour, [(x, y)], dashed, markers)]; a Pillow image."""
    width, height = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, title_font = _font(12), _font(14)
    left, right, top, bottom = 70, legend_width, 44, 46
    box = (left, top, width - right, height - bottom)
    draw.text((8, 6), title, fill=(0, 0, 0), font=title_font)
    fx = math.log10 if log_x else (lambda v: v)
    fy = math.log10 if log_y else (lambda v: v)
    pts = [(x, y) for _, _, p, _, _ in series for x, y in p if (not log_y or y > 0)]
    if hline is not None:
        pts.append((pts[0][0] if pts else 0, hline[0]))
    if not pts:
        draw.text((left + 10, top + 10), "no data", fill=(120, 120, 120), font=font)
        return img
    xs, ys = [fx(x) for x, _ in pts], [fy(y) for _, y in pts]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    if not log_y:
        y_lo = min(0.0, y_lo)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    xpad, ypad = 0.05 * (x_hi - x_lo), 0.08 * (y_hi - y_lo)
    x_lo, x_hi, y_lo, y_hi = (
        x_lo - xpad,
        x_hi + xpad,
        y_lo - (0 if not log_y and y_lo == 0 else ypad),
        y_hi + ypad,
    )

    def px(x, y):
        return (
            box[0] + (fx(x) - x_lo) / (x_hi - x_lo) * (box[2] - box[0]),
            box[3] - (fy(y) - y_lo) / (y_hi - y_lo) * (box[3] - box[1]),
        )

    draw.rectangle(box, outline=(80, 80, 80))
    if log_y:
        decades = range(math.floor(y_lo), math.ceil(y_hi) + 1)
        for mults in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
            yt = [m * 10.0**e for e in decades for m in mults]
            yt = [t for t in yt if y_lo <= math.log10(t) <= y_hi]
            if len(yt) >= 4:
                break
    else:
        yt = _nice_ticks(y_lo, y_hi, 5)
    for t in yt:
        _, y = px(10**x_lo if log_x else x_lo, t)
        draw.line((box[0], y, box[2], y), fill=(228, 228, 228))
        draw.text((box[0] - 5, y), f"{t:g}", fill=(60, 60, 60), font=font, anchor="rm")
    if xticks is None:
        xticks = [10**t for t in _nice_ticks(x_lo, x_hi)] if log_x else _nice_ticks(x_lo, x_hi)
    for t in xticks:
        x, _ = px(t, 10**y_lo if log_y else y_lo)
        draw.line((x, box[3], x, box[3] + 4), fill=(80, 80, 80))
        draw.text((x, box[3] + 6), f"{t:g}", fill=(60, 60, 60), font=font, anchor="mt")
    draw.text(((box[0] + box[2]) / 2, height - 14), xlabel, fill=(0, 0, 0), font=font, anchor="mm")
    draw.text((8, top - 18), ylabel, fill=(0, 0, 0), font=font)
    if hline is not None:
        value, label = hline
        _, y = px(10**x_lo if log_x else x_lo, value)
        for x0 in range(int(box[0]), int(box[2]), 12):
            draw.line((x0, y, min(x0 + 6, box[2]), y), fill=(90, 90, 90), width=1)
        draw.text((box[2] - 4, y - 3), label, fill=(60, 60, 60), font=font, anchor="rb")
    legend_y = top
    for label, rgb, points, dashed, markers in series:
        points = sorted((x, y) for x, y in points if not log_y or y > 0)
        coords = [px(x, y) for x, y in points]
        if len(coords) > 1:
            if dashed:
                for (x0, y0), (x1, y1) in zip(coords, coords[1:], strict=False):
                    n = max(1, int(math.hypot(x1 - x0, y1 - y0) / 10))
                    for i in range(0, n, 2):
                        a, b = i / n, min(1.0, (i + 1) / n)
                        draw.line(
                            (
                                x0 + a * (x1 - x0),
                                y0 + a * (y1 - y0),
                                x0 + b * (x1 - x0),
                                y0 + b * (y1 - y0),
                            ),
                            fill=rgb,
                            width=2,
                        )
            else:
                draw.line(coords, fill=rgb, width=2)
        if markers:
            for x, y in coords:
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=rgb)
        lx = box[2] + 12
        if dashed:
            draw.line((lx, legend_y + 7, lx + 8, legend_y + 7), fill=rgb, width=2)
            draw.line((lx + 14, legend_y + 7, lx + 22, legend_y + 7), fill=rgb, width=2)
        else:
            draw.line((lx, legend_y + 7, lx + 22, legend_y + 7), fill=rgb, width=2)
        draw.text((lx + 28, legend_y), label, fill=(0, 0, 0), font=font)
        legend_y += 18
    return img


# --------------------------------------------------------------------------- train step
def train_rows(data: dict) -> list[dict]:
    rows = []
    for bench in data.get("benchmarks", []):
        info = bench["extra_info"]
        if info.get("kind") != "train_step":
            continue
        rows.append(
            {**info, "median": bench["stats"]["median"], "rounds": bench["stats"]["rounds"]}
        )
    return sorted(rows, key=lambda r: (r["size"], r["batch"], r["backend"]))


def at_batch(rows, backend, size, batch, key, fit=True):
    """(value, how): measured when that case ran, else the affine fit in the batch over
    the measured batches of that backend and size (extrapolated), else (None, why)."""
    pts = [(r["batch"], r[key]) for r in rows if r["backend"] == backend and r["size"] == size]
    for b, v in pts:
        if b == batch:
            return v, "measured"
    fit = train_step.fit_affine(pts) if fit else None
    if fit is None:
        return None, "not measured"
    batches = ",".join(str(b) for b, _ in sorted(pts))
    return fit[0] + fit[1] * batch, f"extrapolated from batches {batches}"


def fmt_ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


def train_section(
    data: dict, largest: dict | None, out_dir: str, compares=(), losses=()
) -> list[str]:
    rows = train_rows(data)
    if not rows:
        return ["No training-step results."]
    for r in rows:
        r["steps_per_s"] = 1.0 / r["median"]
    lines = []
    forms = sorted({r.get("form", "lowres") for r in rows})
    lines += [
        "One full training step as `Trainer.train_step` runs it (SPEC section 8: DeepLab-v2 "
        "ResNet-50 with random initialisation, VGG-19 relu5_2 + relu5_4 features with seeded "
        "random weights (`random_vgg19`, the cost of VGG-19), colour jitter, TPS warp, all five "
        "losses, backward, clipping, both SGD steps), on a fixed in-memory batch, each case in "
        f"a fresh process. Semantic term: `{', '.join(forms)}` form for both backends "
        "(the trainer's default, `semantic_consistency_loss_lowres`): the reference "
        "materialises the (B, 1024, H, W) upsampled features, `cpp` does not.",
        "",
        "`peak` is the process's resident high-water mark over the warm-up and timed steps "
        "(Python, torch, weights, optimiser state, batch and step); `added` is that minus the "
        "resident set after set-up.",
        "",
        "| size | batch | backend | median s/step | steps/s | rounds | peak GiB | added GiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']}x{r['size']} | {r['batch']} | {r['backend']} | {r['median']:.2f} | "
            f"{r['steps_per_s']:.4f} | {r['rounds']} | {r['hwm_mb'] / 1024:.2f} | "
            f"{r['peak_mb'] / 1024:.2f} |"
        )
    lines += [
        "",
        "cpp against reference, same size and batch (measured):",
        "",
        "| size | batch | steps/s ratio | peak ratio | added ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    by = {(r["size"], r["batch"], r["backend"]): r for r in rows}
    for size, batch in sorted({(r["size"], r["batch"]) for r in rows}):
        ref, cpp = by.get((size, batch, "reference")), by.get((size, batch, "cpp"))
        if ref and cpp:
            lines.append(
                f"| {size}x{size} | {batch} | "
                f"{fmt_ratio(cpp['steps_per_s'], ref['steps_per_s'])} | "
                f"{cpp['hwm_mb'] / ref['hwm_mb']:.0%} | {cpp['peak_mb'] / ref['peak_mb']:.0%} |"
            )

    # Plots.
    series = []
    for i, backend in enumerate(sorted({r["backend"] for r in rows})):
        for batch in sorted({r["batch"] for r in rows}):
            pts = [
                (r["size"], r["median"])
                for r in rows
                if r["backend"] == backend and r["batch"] == batch
            ]
            if pts:
                series.append(
                    (f"{backend} batch {batch}", colour(backend, i), pts, batch != 1, True)
                )
    sizes = sorted({r["size"] for r in rows})
    line_plot(
        os.path.join(out_dir, "train_time_vs_resolution.png"),
        "Training step: seconds per step against resolution",
        series,
        xlabel="image size (pixels per side)",
        ylabel="s/step (log)",
        log_x=True,
        log_y=True,
        xticks=sizes,
    )
    cap_gb = (largest or {}).get("cap_gb", 16.0)
    panels = []
    for size in sizes:
        series = []
        for i, backend in enumerate(sorted({r["backend"] for r in rows})):
            pts = [
                (r["batch"], r["hwm_mb"] / 1024)
                for r in rows
                if r["backend"] == backend and r["size"] == size
            ]
            if not pts:
                continue
            rgb = colour(backend, i)
            series.append((f"{backend}", rgb, pts, False, True))
            row = _largest_row(largest, backend, size)
            if row and row.get("fit_mb"):
                a, b = row["fit_mb"]["intercept"] / 1024, row["fit_mb"]["per_image"] / 1024
                top = max(row.get("largest_batch", 1), max(x for x, _ in pts))
                series.append((f"fit to {top}", rgb, [(0, a), (top, a + b * top)], True, False))
        panels.append(
            plot(
                f"Step peak memory, {size}x{size}",
                series,
                xlabel="batch",
                ylabel="peak GiB",
                hline=(cap_gb, f"cap {cap_gb:g}"),
                size=(420, 380),
                legend_width=110,
            )
        )
    side_by_side(os.path.join(out_dir, "train_memory_vs_batch.png"), panels)
    lines += [
        "",
        "![time against resolution](train_time_vs_resolution.png)",
        "![peak memory against batch](train_memory_vs_batch.png)",
    ]

    lines += ["", *compare_section(compares), *loss_share_section(losses, rows, compares)]
    # Targets.
    lines += ["", "### Targets", ""]
    size, batch = CELEBA
    # Times are not extrapolated: on a shared machine one step's time is too noisy for it.
    t = {b: at_batch(rows, b, size, batch, "median", fit=False) for b in ("reference", "cpp")}
    m = {b: at_batch(rows, b, size, batch, "hwm_mb") for b in ("reference", "cpp")}
    a = {b: at_batch(rows, b, size, batch, "peak_mb") for b in ("reference", "cpp")}
    lines += [
        f"CelebA configuration ({size}x{size}, batch {batch}, C=1024 features):",
        "",
        "| quantity | reference | cpp | cpp vs reference | target |",
        "|---|---|---|---:|---|",
    ]
    if not (t["reference"][0] and t["cpp"][0]):
        cells = [f"{v:.1f} ({how})" if v else how for v, how in (t["reference"], t["cpp"])]
        lines.append(f"| s/step | {cells[0]} | {cells[1]} | n/a | >= 1.8x |")
    else:
        lines.append(
            f"| s/step | {t['reference'][0]:.1f} ({t['reference'][1]}) | {t['cpp'][0]:.1f} "
            f"({t['cpp'][1]}) | {t['reference'][0] / t['cpp'][0]:.2f}x steps/s | >= 1.8x: "
            f"{'met' if t['reference'][0] / t['cpp'][0] >= 1.8 else 'NOT met'} |"
        )
    for c in compares:
        b = c["backends"]
        if c["size"] == size and "reference" in b and "cpp" in b:
            r = statistics.median(b["reference"]["step_seconds"])
            p = statistics.median(b["cpp"]["step_seconds"])
            lines.append(
                f"| s/step, side by side at batch {c['batch']} | {r:.1f} (measured) | {p:.1f} "
                f"(measured) | {r / p:.2f}x steps/s | >= 1.8x: "
                f"{'met' if r / p >= 1.8 else 'NOT met'} |"
            )
    if m["reference"][0] and m["cpp"][0]:
        lines.append(
            f"| peak GiB (process) | {m['reference'][0] / 1024:.2f} ({m['reference'][1]}) | "
            f"{m['cpp'][0] / 1024:.2f} ({m['cpp'][1]}) | {m['cpp'][0] / m['reference'][0]:.0%} | "
            f"<= 50%: {'met' if m['cpp'][0] / m['reference'][0] <= 0.5 else 'NOT met'} |"
        )
    if a["reference"][0] and a["cpp"][0]:
        lines.append(
            f"| GiB added by the step | {a['reference'][0] / 1024:.2f} ({a['reference'][1]}) | "
            f"{a['cpp'][0] / 1024:.2f} ({a['cpp'][1]}) | {a['cpp'][0] / a['reference'][0]:.0%} | "
            f"<= 50%: {'met' if a['cpp'][0] / a['reference'][0] <= 0.5 else 'NOT met'} |"
        )
    lines += [
        "",
        "A case that is `not measured` did not run: either it was not asked for, or its "
        "process hit the 10 GiB address-space guard (`--train-run-cap-gb`; the pytest log "
        "says which). Memory at an unmeasured batch is the affine fit in the batch over the "
        "measured ones; times are never extrapolated.",
        "",
        *largest_section(largest),
    ]
    return lines


STEP_LOSSES = ("concentration_loss", "equivariance_losses", "semantic_consistency_loss_lowres")


def loss_share_section(losses: list[dict], rows: list[dict], compares: list[dict]) -> list[str]:
    """How much of a step the losses can account for (Amdahl): the forward + backward
    medians, at the CelebA op size, of the losses the step calls, beside the step."""
    ops = {}
    for d in losses:
        for b in d.get("benchmarks", []):
            info = b["extra_info"]
            if info.get("size") == "celeba" and info.get("device") == "cpu":
                ops[(info["op"], info["impl"])] = b["stats"]["median"]
    if not all((op, impl) in ops for op in STEP_LOSSES for impl in ("eager", "cpp")):
        return []
    ref = sum(ops[(op, "eager")] for op in STEP_LOSSES)
    cpp = sum(ops[(op, "cpp")] for op in STEP_LOSSES)
    size, batch = CELEBA
    step = {r["backend"]: r["median"] for r in rows if (r["size"], r["batch"]) == CELEBA}
    lines = [
        f"Where the step's time goes: the three losses the step calls through a backend "
        f"({', '.join(STEP_LOSSES)}), forward + backward at the CelebA op size "
        f"({size}x{size}, batch {batch}; medians from the loss-op run), take {ref:.2f} s with "
        f"the reference and {cpp:.3f} s with cpp."
    ]
    if "cpp" in step:
        saved = ref - cpp
        lines[-1] += f" The cpp step takes {step['cpp']:.1f} s at that size."
        if "reference" in step and step["reference"] - step["cpp"] > saved:
            lines[-1] += (
                f" The reference step takes {step['reference']:.1f} s: the step saves "
                f"{step['reference'] - step['cpp']:.1f} s, more than the {saved:.2f} s by "
                "which the loss ops differ when each is timed alone with its buffers reused. "
                "Inside a step the reference's loss transients (GiB-sized at this size) "
                "are allocated among the network's activations; that cost is not broken "
                "down further here."
            )
        else:
            lines[-1] += (
                f" Replacing the reference losses by cpp can then save at most {saved:.2f} s "
                f"of a {step['cpp'] + saved:.1f} s reference step: a ceiling of "
                f"{(step['cpp'] + saved) / step['cpp']:.2f}x steps/s from the loss kernels "
                "alone (the rest is the network's convolutions, batch norm and VGG, which "
                "both backends share)."
            )
    return ["", *lines]


def compare_section(compares: list[dict]) -> list[str]:
    """Tables of `train_step.py compare` runs (the backends' steps alternated)."""
    lines = []
    for c in compares:
        b = c["backends"]
        lines += [
            f"Side by side at {c['size']}x{c['size']}, batch {c['batch']}: the backends' steps "
            f"alternated, {c['rounds']} rounds after a warm-up step, in two live processes so "
            f"that both see the same load (load average {c['loadavg_start']} at start, "
            f"{c['loadavg_end']} at end; {c['cpu']}, {c['cores']} cores, torch {c.get('torch')}, "
            f"{c.get('threads')} threads, {c['datetime']}).",
            "",
            "| backend | step seconds | median s/step | steps/s | peak GiB | added GiB |",
            "|---|---|---:|---:|---:|---:|",
        ]
        med = {}
        for name, r in b.items():
            med[name] = statistics.median(r["step_seconds"])
            times = ", ".join(f"{t:.1f}" for t in r["step_seconds"])
            lines.append(
                f"| {name} | {times} | {med[name]:.2f} | {1 / med[name]:.4f} | "
                f"{r['hwm_mb'] / 1024:.2f} | {r['peak_mb'] / 1024:.2f} |"
            )
        if "reference" in b and "cpp" in b:
            lines += [
                "",
                f"cpp against reference: {med['reference'] / med['cpp']:.2f}x steps/s (ratio of "
                f"medians), peak {b['cpp']['hwm_mb'] / b['reference']['hwm_mb']:.0%}, added "
                f"{b['cpp']['peak_mb'] / b['reference']['peak_mb']:.0%}.",
                "",
            ]
    return lines


def _largest_row(largest, backend, size):
    for row in (largest or {}).get("rows", []):
        if row["backend"] == backend and row["size"] == size:
            return row
    return None


def _settled(row: dict) -> bool:
    """A largest batch that the runs confirmed, or one that none contradicted."""
    return row["status"] in (train_step.CONFIRMED, train_step.EXTRAPOLATED)


def _batch_claim(row: dict) -> str:
    """What the runs say of the largest batch of a `largest` row."""
    n = row["largest_batch"]
    if row["status"] == train_step.CONFIRM_FAILED:
        return f"fewer than {n} (batch {n} was refused)"
    if row["status"] == train_step.NEXT_FITS_TOO:
        return f"at least {n + 1}"
    return str(n)


def _run_outcome(run: dict, ran: str, failed: str) -> str:
    """'<ran> X GiB' (the run's peak) or '<failed> (why)' for a `train_step.py` child."""
    if run.get("status") == "ok":
        return f"{ran} {run['hwm_mb'] / 1024:.2f} GiB"
    return f"{failed} ({_failure(run.get('error') or '')})"


def _failure(error: str) -> str:
    """A child's error, shortened: torch's allocation failures to the refused size."""
    refused = re.search(r"tried to allocate (\d+) bytes", error)
    if refused:
        return f"an allocation of {int(refused.group(1)) / 2**20:.0f} MiB was refused"
    return error[:80]


def largest_section(largest: dict | None) -> list[str]:
    if not largest:
        return ["Largest batch under a cap: not run (`train_step.py largest`)."]
    cap = largest["cap_gb"]
    lines = [
        f"Largest batch whose peak stays under {cap:g} GiB: affine fit of the measured peaks "
        "against batch, `floor((cap - intercept) / per_image)`. A batch is confirmed by a real "
        f"run when its predicted peak is under {largest['run_cap_gb']:g} GiB (`--run-cap-gb`) "
        "at a size `make bench` asks to confirm (`--confirm-sizes`), and the next batch is then "
        f"run under a {cap:g} GiB guard, where it must fail to allocate; otherwise the largest "
        "batch is extrapolated. The guard caps the address space (resident set at set-up plus "
        "new virtual memory), which is stricter than the resident peak: near the cap a batch "
        "whose peak would fit can be refused, and an extrapolation from small batches can be "
        "off by one or two images either way.",
        "",
        "| size | backend | measured batches | GiB + GiB/image (fit) | largest batch "
        "| predicted peak GiB | status |",
        "|---|---|---|---|---:|---:|---|",
    ]
    best = defaultdict(dict)
    checks = []
    for row in largest["rows"]:
        pts = ",".join(str(p["batch"]) for p in row["points"])
        if row.get("fit_note"):
            pts += f" ({row['fit_note']})"
        fit = row.get("fit_mb")
        fit_text = (
            f"{fit['intercept'] / 1024:.2f} + {fit['per_image'] / 1024:.2f}" if fit else "n/a"
        )
        pred = row.get("predicted_hwm_mb")
        lines.append(
            f"| {row['size']}x{row['size']} | {row['backend']} | {pts} | {fit_text} | "
            f"{_batch_claim(row) if 'largest_batch' in row else 'n/a'} | "
            f"{'' if pred is None else f'{pred / 1024:.2f}'} | "
            f"{row['status']} |"
        )
        if "largest_batch" in row:
            best[row["size"]][row["backend"]] = row
        case = f"- {row['size']}x{row['size']} {row['backend']}, batch"
        c, over, v = row.get("confirm"), row.get("over"), row.get("validation")
        if c:
            checks.append(
                f"{case} {row['largest_batch']} (the largest predicted under {cap:g} GiB): "
                f"predicted {pred / 1024:.2f} GiB, {_run_outcome(c, 'measured', 'run failed')}."
            )
        if over:
            checks.append(
                f"{case} {over['batch']} under a {cap:g} GiB guard: "
                f"{_run_outcome(over, 'ran, peak', 'failed')}."
            )
        if v:
            checks.append(
                f"{case} {v['batch']} (the largest predicted under {largest['run_cap_gb']:g} "
                f"GiB): predicted {v['predicted_hwm_mb'] / 1024:.2f} GiB, "
                f"{_run_outcome(v, 'measured', 'run failed')}."
            )
    if checks:
        lines += ["", "Checks of the fit by a real run:", "", *checks]
    for size in sorted(best):
        ref, cpp = best[size].get("reference"), best[size].get("cpp")
        if not (ref and cpp):
            continue
        rb, cb = ref["largest_batch"], cpp["largest_batch"]
        if not (_settled(ref) and _settled(cpp)):
            # Bounds where the runs give them: cpp from below, the reference from above.
            low = cb + 1 if cpp["status"] == train_step.NEXT_FITS_TOO else cb
            high = rb - 1 if ref["status"] == train_step.CONFIRM_FAILED else rb
            bounded = (
                cpp["status"] != train_step.CONFIRM_FAILED
                and ref["status"] != train_step.EXTRAPOLATED
            )
            ratio = (
                f"at least {low / high:.2f}x"
                if bounded and high > 0
                else "no ratio follows from the runs"
            )
            lines += [
                "",
                f"At {size}x{size}: cpp {_batch_claim(cpp)} against reference "
                f"{_batch_claim(ref)} images per step under {cap:g} GiB: {ratio}.",
            ]
            continue
        ratio = "n/a (reference fits none)" if rb == 0 else f"{cb / rb:.2f}x"
        verdict = ""
        if size == 512:
            met = rb and cb / rb >= 1.8 or (rb == 0 and cb > 0)
            verdict = f" Target >= 1.8x: {'met' if met else 'NOT met'}."
        lines += [
            "",
            f"At {size}x{size}: cpp {cb} against reference {rb} images per step under "
            f"{cap:g} GiB: {ratio} ({cpp['status']} / {ref['status']}).{verdict}",
        ]
    return lines


# --------------------------------------------------------------------------- loss ops
def ops_section(datas: list[dict], out_dir: str) -> list[str]:
    merged = {
        "benchmarks": [
            b
            for d in datas
            for b in d.get("benchmarks", [])
            if b["extra_info"].get("kind") != "train_step"
        ]
    }
    if not merged["benchmarks"]:
        return ["No loss-op results."]
    merged["machine_info"] = datas[0].get("machine_info", {})
    merged["datetime"] = datas[0].get("datetime")
    lines = [
        "Forward + backward of each loss (`bench_losses.py`): median time, speed-up over the "
        "eager reference and torch.compile of it, bandwidth against the op's floor of bytes, "
        "and `peak MiB`, the resident high-water mark of one forward + backward above the "
        "resident set before it (fresh subprocess per case; compile: after compiling).",
        "",
        summarize.markdown(merged, memory=True),
    ]
    # Time per image against resolution: at each resolution the first size measured of
    # PLOT_SIZES (one batch per resolution, so the lines compare like with like).
    found = {}
    for b in merged["benchmarks"]:
        info = b["extra_info"]
        key = next((k for k in ("pred", "x", "part_probs") if k in info.get("shape", {})), None)
        if key is None or info["size"] not in PLOT_SIZES or info["impl"] not in ("eager", "cpp"):
            continue  # the copy, orthonormal_loss (no image), other implementations
        batch, res = info["shape"][key][0], info["shape"][key][-1]
        found[(info["op"], info["impl"], res, info["size"])] = b["stats"]["median"] / batch * 1e3
    series = []
    for i, op in enumerate(sorted({k[0] for k in found})):
        for impl in ("eager", "cpp"):
            pts = []
            for res in sorted({k[2] for k in found}):
                for size in PLOT_SIZES:
                    if (op, impl, res, size) in found:
                        pts.append((res, found[(op, impl, res, size)]))
                        break
            if len(pts) > 1:
                label = f"{SHORT.get(op, op)} {impl}"
                series.append((label, PALETTE[i % len(PALETTE)], pts, impl == "eager", True))
    if series:
        line_plot(
            os.path.join(out_dir, "ops_time_vs_resolution.png"),
            "Loss ops: ms per image (fwd+bwd) against resolution; dashed: eager reference",
            series,
            xlabel="image size (pixels per side)",
            ylabel="ms/image (log)",
            log_x=True,
            log_y=True,
            size=(960, 480),
            xticks=sorted({x for _, _, p, _, _ in series for x, _ in p}),
            legend_width=220,
        )
        lines += [
            "",
            "![ops time against resolution](ops_time_vs_resolution.png)",
            "",
            "Points: milliseconds per image; at 256x256 from the first of the sizes "
            f"{', '.join(PLOT_SIZES[:-1])} that was measured, at 512x512 from hires512.",
        ]
    return lines


# --------------------------------------------------------------------------- document
def header(datas: list[dict]) -> list[str]:
    lines = []
    for name, d in datas:
        mi = d.get("machine_info", {})
        cpu = mi.get("cpu", {})
        start, end = mi.get("loadavg_start"), mi.get("loadavg_end")
        load = ""
        if end:
            load = f", load average (1, 5, 15 min) {end} when saved"
            if start and start != end:
                load += f", {start} at start"
        lines.append(
            f"- `{name}`: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical cores, "
            f"torch {mi.get('torch', 'not recorded')} ({mi.get('torch_threads', '?')} threads), "
            f"Python {mi.get('python_version', '?')}, saved {d.get('datetime', '?')}{load}."
        )
    return lines


def original_section(data: dict) -> list[str]:
    """The original's training step against ours (benchmarks/original_step.py)."""
    m = data["machine"]
    lines = [
        f"The original SCOPS trainer's step (its own code, patched to run on the CPU) and ours "
        f"at {data['size']}x{data['size']}, batch {data['batch']}, the CelebA K=8 experiment's "
        f"settings, run one after the other in fresh processes on {m['threads']} threads "
        f"({m['cpu']}, load {m['load_average'][0]:.2f} at the start, {data['date']}):",
        "",
        original_step.summary(data["results"]).rstrip("\n"),
    ]
    shares = data.get("profile", {}).get("profile_fraction")
    if shares:
        parts = ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
        lines += [
            "",
            f"Where a `{data['profile']['backend']}` step's time goes (torch.profiler, self CPU "
            f"time of one step): {parts}.",
        ]
    return lines


def levers_section(levers: dict) -> list[str]:
    """benchmarks/train_levers.py's table (make bench-levers) and how to read it."""
    from train_levers import table

    return [
        f"`make bench-levers` on {levers.get('cpu', 'this CPU')}: the largest batch of the "
        "SPEC section 8 training step (DeepLab ResNet-50, cpp losses) whose process peak "
        f"stays under {levers['cap_gb']:g} GiB, per image size and lever (`none`; "
        "`model.activation_checkpointing=blocks`; the same with `precision=bfloat16`; "
        "`original`, where measured: the original SCOPS code's own trainer, its step 1, "
        "through `benchmarks/original_step.py`; `stages`: `blocks` with a ResNet stage per "
        "region). The resident peaks at two small batches (2 and 4; 1 and 2 for `original`) "
        "give an affine fit and the predicted batch (`predicted`). Where `confirmed`, real "
        "runs under an address-space guard at the cap found a batch that runs and the next "
        "one refused (`next batch`); the guard caps virtual memory, which is stricter than "
        "the resident peak. s/image: the confirming step's seconds over its batch (for "
        "predicted rows, the largest fit batch's), one cold step each (a first step: a later "
        "one also holds SGD's momentum, which a first step allocates after its peak, 91 MiB "
        "on this network; `scops-train --batch-size auto` measures with it); `vs none` "
        "divides by "
        "the lever-less step's s/image at its largest fit batch at the same size, timed in "
        "the same run, except for the rows a later `--append` run added (`selective`, "
        "`stages`, `original`), whose ratio crosses runs.",
        "",
        table(levers),
    ]


def predict_section(predict: dict) -> list[str]:
    """benchmarks/predict_throughput.py's table (make bench-predict)."""
    from predict_throughput import table

    lines = [
        f"`make bench-predict` on {predict.get('cpu', 'this CPU')} ({predict['cores']} cores, "
        f"{predict['torch_threads']} torch threads, load average {predict['load_average']:.1f} "
        "at the start): scops-predict over folders of 256x256 PNGs with randomly initialised "
        "networks (the demo's `small` and DeepLab ResNet-50), each setting into a fresh output "
        "folder, one after the other in one run. `vs one at a time` divides by the first row of "
        "the same network: one image per network call on the main thread.",
        "",
        table(predict),
    ]
    flat = predict.get("flat")
    if flat:
        lines += [
            "",
            f"Memory over {flat['images']} images ({flat['size']}x{flat['size']}, demo network, "
            f"{flat['seconds']:.0f} s): the process's resident set was "
            f"{flat['rss_mb_at_10_to_20_percent']} MB while the first 10-20% were written and "
            f"{flat['rss_mb_at_90_to_100_percent']} MB over the last 10%: the results are "
            "appended to parts.jsonl as they come, not held.",
        ]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results = os.path.join(HERE, "results")
    parser.add_argument(
        "--losses",
        nargs="*",
        default=[os.path.join(results, "losses.json"), os.path.join(results, "losses_heavy.json")],
    )
    parser.add_argument(
        "--train",
        nargs="*",
        default=[os.path.join(results, "train.json"), os.path.join(results, "train_celeba.json")],
    )
    parser.add_argument("--largest", default=os.path.join(results, "largest.json"))
    parser.add_argument(
        "--compare", nargs="*", default=[os.path.join(results, "compare_256x2.json")]
    )
    parser.add_argument("--original", default=os.path.join(results, "original_step.json"))
    parser.add_argument("--levers", default=os.path.join(results, "levers.json"))
    parser.add_argument("--predict", default=os.path.join(results, "predict.json"))
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    losses = [(p, load(p)) for p in args.losses]
    losses = [(p, d) for p, d in losses if d]
    trains = [(p, load(p)) for p in args.train]
    trains = [(p, d) for p, d in trains if d]
    train = (
        {"benchmarks": [b for _, d in trains for b in d.get("benchmarks", [])]} if trains else None
    )
    largest = load(args.largest)
    compares = [d for d in map(load, args.compare) if d]
    original = load(args.original)
    levers = load(args.levers)
    predict = load(args.predict)
    sources = [(os.path.relpath(p, out_dir), d) for p, d in losses + trains]
    doc = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/report.py` from the saved results below (`make bench` "
        "reruns everything). Do not edit by hand.",
        "",
        *header(sources),
        "",
        "Timings on a shared machine follow its load (the load averages above, against the "
        "core count): one step or op can take up to about twice as long from one run to the "
        "next, so compare implementations within one run, preferably the side-by-side run; "
        "peak memory does not depend on the load.",
        "",
        "## Against the original",
        "",
        *(original_section(original) if original else ["Not run (make bench ORIGINAL=...)."]),
        "",
        "## Training step",
        "",
        *(
            train_section(train, largest, out_dir, compares, [d for _, d in losses])
            if train
            else ["Not run."]
        ),
        "",
        "## Memory levers",
        "",
        *(levers_section(levers) if levers else ["Not run (make bench-levers)."]),
        "",
        "## Prediction",
        "",
        *(predict_section(predict) if predict else ["Not run (make bench-predict)."]),
        "",
        "## Loss ops",
        "",
        *(ops_section([d for _, d in losses], out_dir) if losses else ["Not run."]),
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(doc))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
