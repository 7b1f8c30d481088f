"""The largest training batch under a memory cap with each of the trainer's memory levers,
confirmed by real runs: `make bench-levers`.

    python benchmarks/train_levers.py --sizes 256,512,768,1024 --confirm-sizes 512,1024 \\
        --cap-gb 16 --out benchmarks/results/levers.json

Per image size and lever (none; `model.activation_checkpointing=blocks`; the same with
`precision=bfloat16`), each a fresh `train_step.py run` child of one cold step on the
SPEC section 8 network (DeepLab ResNet-50, random weights, the cpp losses):

1. the process's resident peak at two small batches (`--fit-batches`), fitted affine in
   the batch; the largest batch whose predicted peak is under the cap;
2. at the sizes of `--confirm-sizes`: real runs under an address-space guard at the cap
   (`memprobe.guard`), from that batch, bisecting, until a batch that runs sits next to
   one that is refused: the batch found is the largest that fits, not only one that
   does. A fit batch that is refused bounds the search from above.

Time per image is the confirmed step's seconds over its batch, beside the lever-less
step's at the largest fit batch, timed in the same run. Both are one cold step on a
shared CPU: compare ratios, not seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step  # noqa: E402

CHECKPOINTED = {"model.activation_checkpointing": "blocks"}
LEVERS = {
    "none": {},
    "checkpointing": CHECKPOINTED,
    "checkpointing+bfloat16": {**CHECKPOINTED, "precision": "bfloat16"},
    # Not in the default run: predicted only, by make bench-levers' second command.
    "selective": {"model.activation_checkpointing": "selective"},
    "stages": {"model.activation_checkpointing": "stages"},
    # The original SCOPS code's own trainer (benchmarks/original_step.py), given
    # --original and --tps checkouts: its step at the same size and batch.
    "original": None,
}
DEFAULT_LEVERS = ("none", "checkpointing", "checkpointing+bfloat16")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


#: Checkouts of the original code and its TPS (--original, --tps), for the "original" lever.
ORIGINAL: dict = {}


def _run(size, batch, lever, cap_gb) -> dict:
    start = time.monotonic()
    print(f"{lever} {size}px batch {batch} ...", file=sys.stderr, flush=True)
    if lever == "original":
        out = _run_original(size, batch, cap_gb)
    else:
        out = train_step.run_child(
            "cpp", size, batch, warmup=0, steps=1, guard_gb=cap_gb, overrides=LEVERS[lever]
        )
    keep = ("status", "hwm_mb", "peak_mb", "step_seconds", "error")
    row = {"batch": batch, **{k: out[k] for k in keep if k in out}}
    row["wall_seconds"] = round(time.monotonic() - start, 1)
    print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def _run_original(size, batch, cap_gb) -> dict:
    """One step of the original's trainer (its step 1: step 0 also writes a snapshot) in a
    fresh child under the same guard; a child that dies (refused memory) is "failed"."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "original_step.py")
    cmd = [sys.executable, script, "original", "--original", ORIGINAL["original"]]
    cmd += ["--tps", ORIGINAL["tps"], "--size", str(size), "--batch", str(batch)]
    cmd += ["--warmup", "0", "--steps", "1", "--first-step", "1", "--guard-gb", str(cap_gb)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(train_step.PROTOCOL):
            return json.loads(line[len(train_step.PROTOCOL) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "failed", "error": " | ".join(tail)}


def _fits(run: dict, cap_mb: float) -> bool:
    return run["status"] == "ok" and run["hwm_mb"] <= cap_mb


def measure(size: int, lever: str, args) -> dict:
    """The row of one (size, lever): fit points, prediction, confirmation."""
    cap_mb = args.cap_gb * 1024
    row = {"size": size, "lever": lever, "overrides": LEVERS[lever], "points": []}
    for batch in args.fit_batches:
        run = _run(size, batch, lever, args.cap_gb)
        row["points"].append(run)
        if not _fits(run, cap_mb):
            break
    ran = [p for p in row["points"] if _fits(p, cap_mb)]
    refused = [p for p in row["points"] if not _fits(p, cap_mb)]
    if len(ran) < 2:
        # The fit itself walked into the cap: below it, the search needs no prediction.
        row.update(largest_batch=ran[-1]["batch"] if ran else 0, status="predicted")
        prediction = ran[-1]["batch"] if ran else 1
    else:
        fit = train_step.fit_affine([(p["batch"], p["hwm_mb"]) for p in ran])
        prediction = train_step.largest_batch(fit, cap_mb)
        row.update(
            fit_mb={"intercept": fit[0], "per_image": fit[1]},
            predicted_batch=prediction,
            predicted_hwm_mb=fit[0] + fit[1] * prediction,
            largest_batch=prediction,
            status="predicted",
        )
    if size in args.confirm_sizes:
        search(row, ran, refused, prediction, args)
    return row


def search(row: dict, ran: list, refused: list, prediction: int, args) -> None:
    """Real runs from the prediction until a batch that fits sits next to one that is
    refused (at most --max-runs of them); `row` gets the confirmed batch and the refusal."""
    cap_mb = args.cap_gb * 1024
    good = max(ran, key=lambda r: r["batch"]) if ran else None
    bad = min(refused, key=lambda r: r["batch"]) if refused else None
    probe, step = max(1, prediction), 1
    for _ in range(args.max_runs):
        if (good and bad and bad["batch"] == good["batch"] + 1) or (bad and bad["batch"] == 1):
            break
        if good and probe <= good["batch"]:
            probe = good["batch"] + 1
        if bad and probe >= bad["batch"]:
            probe = (good["batch"] if good else 0) + max(
                1, (bad["batch"] - (good["batch"] if good else 0)) // 2
            )
        run = _run(row["size"], probe, row["lever"], args.cap_gb)
        row.setdefault("search", []).append(run)
        if _fits(run, cap_mb):
            good = run
            if bad:  # bisect between the two
                probe = good["batch"] + max(1, (bad["batch"] - good["batch"]) // 2)
            else:  # the next batch, then wider steps up
                probe, step = probe + step, step * 2
        else:
            bad = run
            probe = (good["batch"] if good else 0) + max(
                1, (probe - (good["batch"] if good else 0)) // 2
            )
    if good and bad and bad["batch"] == good["batch"] + 1:
        row.update(confirm=good, over=bad, largest_batch=good["batch"], status="confirmed")
    elif good:
        row.update(
            confirm=good,
            largest_batch=good["batch"],
            status=f"ran; at least {good['batch']} (search stopped)",
        )
        if bad:
            row["over"] = bad
    elif bad and bad["batch"] == 1:
        row.update(over=bad, largest_batch=0, status="no batch fits")
    else:
        row.update(largest_batch=None, status="confirm failed")


def seconds_per_image(run: dict | None) -> float | None:
    if not run or run.get("status") != "ok" or not run.get("step_seconds"):
        return None
    return run["step_seconds"][0] / run["batch"]


def _largest_point(row: dict) -> dict | None:
    """The largest fit batch that ran."""
    ran = [p for p in row["points"] if p["status"] == "ok"]
    return max(ran, key=lambda p: p["batch"]) if ran else None


def _timed(row: dict) -> dict | None:
    """The run whose seconds the table shows: the confirming one, else the largest fit batch."""
    return row.get("confirm") or _largest_point(row)


def _status(row: dict) -> str:
    refused = [p["batch"] for p in row["points"] if p["status"] != "ok"]
    if row["status"] == "predicted" and "fit_mb" not in row and refused:
        # A fit batch was refused at a size that is not searched: a bound, not a fit.
        return f"at least {row['largest_batch']}; batch {refused[0]} refused (not searched)"
    return row["status"]


def table(result: dict) -> str:
    """The Markdown table of RESULTS.md."""
    rows = result["rows"]
    base = {r["size"]: seconds_per_image(_timed(r)) for r in rows if r["lever"] == "none"}
    out = [
        f"| size | lever | largest batch under {result['cap_gb']:g} GiB | status | "
        "peak GiB (run) | GiB/image (fit) | s/image | vs no lever (s/image) | next batch |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    order = ["original", "none", "selective", "checkpointing", "stages", "checkpointing+bfloat16"]
    for r in sorted(rows, key=lambda r: (r["size"], order.index(r["lever"]))):
        confirm, over = r.get("confirm"), r.get("over")
        per_image = r.get("fit_mb", {}).get("per_image")
        spi = seconds_per_image(_timed(r))
        ratio = spi / base[r["size"]] if spi and base.get(r["size"]) else None
        out.append(
            "| {size}x{size} | {lever} | {best} | {status} | {peak} | {slope} | {spi} | "
            "{ratio} | {over} |".format(
                size=r["size"],
                lever=r["lever"],
                best=r.get("largest_batch") if r.get("largest_batch") is not None else "-",
                status=_status(r),
                peak=f"{confirm['hwm_mb'] / 1024:.2f}" if confirm else "-",
                slope=f"{per_image / 1024:.3f}" if per_image else "-",
                spi=f"{spi:.2f}" if spi else "-",
                ratio=f"{ratio:.2f}x" if ratio else "-",
                over=(
                    f"batch {over['batch']}: {'refused' if over['status'] != 'ok' else 'ran'}"
                    if over
                    else "-"
                ),
            )
        )
    return "\n".join(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_ints, default=[256, 512, 768, 1024])
    parser.add_argument("--levers", default=",".join(DEFAULT_LEVERS))
    parser.add_argument("--fit-batches", type=_ints, default=[2, 4])
    parser.add_argument(
        "--max-runs", type=int, default=5, help="real runs per row in the search (default 5)"
    )
    parser.add_argument(
        "--confirm-sizes", type=_ints, default=[512, 1024], help="comma-separated; '' for none"
    )
    parser.add_argument("--cap-gb", type=float, default=16.0)
    parser.add_argument("--original", help="lever original: a checkout of NVlabs/SCOPS")
    parser.add_argument("--tps", help="lever original: a checkout of WarBean/tps_stn_pytorch")
    parser.add_argument("--out", help="JSON file, rewritten after every row")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows of --out (other sizes or levers), replacing those measured again",
    )
    args = parser.parse_args(argv)
    levers = [name.strip() for name in args.levers.split(",")]
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        parser.error(f"--levers: unknown {unknown}; choose from {list(LEVERS)}")
    if "original" in levers:
        if not args.original or not args.tps:
            parser.error("--levers original: --original and --tps name the checkouts")
        ORIGINAL.update(original=args.original, tps=args.tps)
    result = {
        "cap_gb": args.cap_gb,
        "fit_batches": args.fit_batches,
        "cpu": train_step.memprobe.cpu_model(),
        "rows": [],
    }
    if args.append and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            kept = json.load(f)
        if kept.get("cap_gb") != args.cap_gb:
            parser.error(f"--append: {args.out} was measured under {kept.get('cap_gb')} GiB")
        redo = {(size, lever) for size in args.sizes for lever in levers}
        result["rows"] = [r for r in kept["rows"] if (r["size"], r["lever"]) not in redo]
    for size in args.sizes:
        for lever in levers:
            result["rows"].append(measure(size, lever, args))
            if args.out:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                tmp = args.out + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(result, f, indent=1)
                os.replace(tmp, args.out)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
