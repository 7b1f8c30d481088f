"""Tables from a pytest-benchmark JSON file: per op and size, each implementation's
median time, its speed-up over the eager reference and torch.compile, and its
achieved bandwidth (min_bytes / median) as a fraction of a plain copy in the same run,
and, with --memory, each case's peak memory (extra_info peak_mb). Training-step entries
(bench_train_step.py) are left to report.py.

    python benchmarks/summarize.py results.json [--markdown OUT.md] [--memory]
    python benchmarks/summarize.py results.json --terminal    # the end-of-run summary again
"""

import argparse
import json
from collections import defaultdict


def rows(data: dict):
    """(op, size, device) -> {impl: (median seconds, min_bytes)}, plus copy GB/s per size."""
    table = defaultdict(dict)
    copy = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "min_bytes" not in info:  # not a loss-op or copy case
            continue
        median = bench["stats"]["median"]
        if info["op"] == "copy":
            copy[(info["size"], info["device"])] = info["min_bytes"] / median / 1e9
            continue
        table[(info["op"], info["size"], info["device"])][info["impl"]] = (
            median,
            info["min_bytes"],
            info.get("peak_mb"),
        )
    return table, copy


def summary_rows(data: dict) -> list[dict]:
    """One row per op, size, device and implementation, fastest first within a case:
    median seconds, speed-ups over eager and torch.compile of the same run, achieved
    GB/s (min_bytes / median) and its fraction of a copy's in the same run, and the peak
    memory (MiB, None where not measured) with its fraction of eager's."""
    table, copy = rows(data)
    out = []
    for (op, size, device), impls in sorted(table.items()):
        eager = impls.get("eager", (None, None, None))
        compiled = impls.get("compile", (None,))[0]
        copy_gbs = copy.get((size, device))
        for impl, (median, nbytes, peak_mb) in sorted(impls.items(), key=lambda kv: kv[1][0]):
            gbs = nbytes / median / 1e9
            out.append(
                {
                    "op": op,
                    "size": size,
                    "device": device,
                    "impl": impl,
                    "median_s": median,
                    "x_eager": eager[0] / median if eager[0] else None,
                    "x_compile": compiled / median if compiled else None,
                    "gb_per_s": gbs,
                    "of_copy": gbs / copy_gbs if copy_gbs else None,
                    "peak_mb": peak_mb,
                    "peak_of_eager": peak_mb / eager[2]
                    if peak_mb is not None and eager[2]
                    else None,
                }
            )
    return out


def _peak(mb) -> str:
    return "" if mb is None else f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"


def markdown(data: dict, memory: bool = False) -> str:
    _, copy = rows(data)
    lines = [
        "| op | size | impl | median ms | x eager | x compile | GB/s | of copy |"
        + (" peak MiB | of eager |" if memory else ""),
        "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if memory else ""),
    ]
    for r in summary_rows(data):
        cells = [
            r["op"],
            f"{r['size']} {r['device']}",
            r["impl"],
            f"{r['median_s'] * 1e3:.2f}",
            f"{r['x_eager']:.1f}" if r["x_eager"] else "",
            f"{r['x_compile']:.1f}" if r["x_compile"] else "",
            f"{r['gb_per_s']:.2f}",
            f"{r['of_copy']:.0%}" if r["of_copy"] else "",
        ]
        if memory:
            cells.append(_peak(r["peak_mb"]))
            ok = r["peak_of_eager"] is not None and r["peak_mb"] is not None
            cells.append(f"{r['peak_of_eager']:.0%}" if ok else "")
        lines.append("| " + " | ".join(cells) + " |")
    for (size, device), gbs in sorted(copy.items()):
        lines.append(f"\nCopy bandwidth, {size} {device}: {gbs:.2f} GB/s (read + write).")
    machine = data.get("machine_info", {})
    lines.append(
        f"\nMachine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores; run {data.get('datetime', '?')}."
    )
    return "\n".join(lines)


def machine_summary(loadavg_start: str = "?", loadavg_end: str = "?") -> dict:
    """This machine as the summary states it: CPU, the cpp kernels' instruction-set build,
    torch's threads, the load average at the start and the end of the run."""
    import memprobe
    import torch

    from scops_fast import available_backends

    return {
        "cpu": memprobe.cpu_model(),
        "cpu_kernels": available_backends().details.get("cpp", "cpp unavailable"),
        "threads": torch.get_num_threads(),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "torch": torch.__version__,
    }


def terminal_text(rows_: list[dict], machine: dict, copy: dict | None = None) -> str:
    """The end-of-run answer: per op and implementation, how much faster and lighter."""
    head = (
        f"{'op':34s} {'size':8s} {'impl':9s} {'median ms':>10s} {'x eager':>8s} "
        f"{'x compile':>9s} {'of copy':>8s} {'peak MiB':>9s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows_:
        lines.append(
            f"{r['op']:34s} {r['size']:8s} {r['impl']:9s} {r['median_s'] * 1e3:10.2f} "
            + (f"{r['x_eager']:8.1f} " if r["x_eager"] else f"{'':8s} ")
            + (f"{r['x_compile']:9.1f} " if r["x_compile"] else f"{'':9s} ")
            + (f"{r['of_copy']:8.0%} " if r["of_copy"] else f"{'':8s} ")
            + f"{_peak(r['peak_mb']):>9s}"
        )
    for (size, device), gbs in sorted((copy or {}).items()):
        lines.append(f"copy bandwidth ({size}, {device}): {gbs:.1f} GB/s read + write")
    lines.append(
        f"machine: {machine['cpu']}; cpp kernels: {machine['cpu_kernels']}; "
        f"{machine['threads']} threads; load average {machine['loadavg_start']} at the start, "
        f"{machine['loadavg_end']} at the end"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--memory", action="store_true", help="add the peak-memory columns")
    parser.add_argument(
        "--terminal",
        action="store_true",
        help="print the end-of-run summary of `pytest benchmarks/ --benchmark` saved in the file",
    )
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    if args.terminal:
        saved = data["scops_fast_summary"]
        text = terminal_text(saved["rows"], saved["machine"], rows(data)[1])
    else:
        text = markdown(data, memory=args.memory)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
