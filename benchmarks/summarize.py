"""Tables from a pytest-benchmark JSON file: per op and size, each implementation's
median time, its speed-up over the eager reference and torch.compile, and its
achieved bandwidth (min_bytes / median) as a fraction of a plain copy in the same run,
and, with --memory, each case's peak memory (extra_info peak_mb). Training-step entries
(bench_train_step.py) are left to report.py.

    python benchmarks/summarize.py results.json [--markdown OUT.md] [--memory]
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


def markdown(data: dict, memory: bool = False) -> str:
    table, copy = rows(data)
    lines = [
        "| op | size | impl | median ms | x eager | x compile | GB/s | of copy |"
        + (" peak MiB | of eager |" if memory else ""),
        "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if memory else ""),
    ]
    for (op, size, device), impls in sorted(table.items()):
        eager = impls.get("eager", (None,))[0]
        compiled = impls.get("compile", (None,))[0]
        copy_gbs = copy.get((size, device))
        eager_mb = impls.get("eager", (None, None, None))[2]
        for impl, (median, nbytes, peak_mb) in sorted(impls.items(), key=lambda kv: kv[1][0]):
            gbs = nbytes / median / 1e9
            cells = [
                op,
                f"{size} {device}",
                impl,
                f"{median * 1e3:.2f}",
                f"{eager / median:.1f}" if eager else "",
                f"{compiled / median:.1f}" if compiled else "",
                f"{gbs:.2f}",
                f"{gbs / copy_gbs:.0%}" if copy_gbs else "",
            ]
            if memory:
                cells.append(
                    ""
                    if peak_mb is None
                    else f"{peak_mb:.1f}"
                    if peak_mb < 100
                    else f"{peak_mb:.0f}"
                )
                ok = peak_mb is not None and eager_mb and eager_mb > 0
                cells.append(f"{peak_mb / eager_mb:.0%}" if ok else "")
            lines.append("| " + " | ".join(cells) + " |")
    for (size, device), gbs in sorted(copy.items()):
        lines.append(f"\nCopy bandwidth, {size} {device}: {gbs:.2f} GB/s (read + write).")
    machine = data.get("machine_info", {})
    lines.append(
        f"\nMachine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores; run {data.get('datetime', '?')}."
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--memory", action="store_true", help="add the peak-memory columns")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        text = markdown(json.load(f), memory=args.memory)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
