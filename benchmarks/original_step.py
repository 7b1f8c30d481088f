"""The original SCOPS training step against ours, side by side, on this machine.

    python benchmarks/original_step.py --original PATH/TO/SCOPS --tps PATH/TO/tps_stn_pytorch \
        [--size 256] [--batch 6] [--steps 2] [--backends cpp,reference] [--out FILE.json]

Each step runs in a fresh process, one after another, with the same threads:
- `original`: the original's own SCOPSTrainer.step (its losses, TPS, jitter and optimisers)
  on a checkout given by path, patched in a temporary copy to run on the CPU (see
  scripts/original_checkout.py), with the CelebA K=8 experiment's settings
  (exps/SCOPS_K8_retrain.json) at `--size` and `--batch`, random network weights and a
  VGG-19 with seeded random weights;
- ours: `scops_fast.train.Trainer.train_step` as benchmarks/train_step.py runs it (the same
  experiment's settings, `loss.backend` per backend).
Both train on one fixed in-memory batch of random images and saliency maps; data loading
is not timed. Reported: seconds per step (median of `--steps` after one warm-up step) and
peak resident memory (whole process), and where our step's time goes (torch.profiler over
one step: convolutions, our loss ops, the rest).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts"))

import memprobe  # noqa: E402
import train_step  # noqa: E402

PROTOCOL = train_step.PROTOCOL
GUARD_GB = 16.0


# --------------------------------------------------------------------------- children
def child_original(args) -> dict:
    """Warm-up + `steps` steps of the original trainer; JSON result."""
    import numpy as np
    import torch
    import torchvision
    from original_checkout import prepare_original

    torch.manual_seed(0)
    np.random.seed(0)
    work = pathlib.Path(tempfile.mkdtemp(prefix="scops-original-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # 29 MB a run
    prepare_original(pathlib.Path(args.original), pathlib.Path(args.tps), work)
    import scops_trainer
    from model.model_factory import model_generator

    vgg19 = torchvision.models.vgg19
    torchvision.models.vgg19 = lambda *a, **k: vgg19(weights=None)  # no download
    exp_path = work / "scops_original" / "exps" / "SCOPS_K8_retrain.json"
    exp = json.loads(exp_path.read_text())
    exp.update(
        {
            "input_size": (args.size, args.size),
            "batch_size": args.batch,
            "restore_from": "None",
            "snapshot_dir": str(work / "snapshots"),
            "num_classes": exp["num_parts"] + 1,
            "restore_part_basis": "",
            "gpu": 0,
        }
    )
    ns = argparse.Namespace(**exp)
    os.makedirs(os.path.join(ns.snapshot_dir, ns.exp_name), exist_ok=True)
    model = model_generator(ns)
    model.train()
    trainer = scops_trainer.SCOPSTrainer(ns, model)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.rand(args.batch, 3, args.size, args.size, generator=gen) * 255 - 120,
        "saliency": torch.rand(args.batch, args.size, args.size, generator=gen),
    }
    memprobe.guard(args.guard_gb * 1024)
    # Its first step (i = 0) also saves a visualisation and the basis: warm-up.
    null = open(os.devnull, "w")

    def step(i):
        start = time.perf_counter()
        stdout, sys.stdout = sys.stdout, null
        try:
            trainer.step(batch, i)
        finally:
            sys.stdout = stdout
        return time.perf_counter() - start

    first = args.first_step
    with memprobe.Peak() as peak:
        warm = [step(first + i) for i in range(args.warmup)]
        times = [step(first + args.warmup + i) for i in range(args.steps)]
    return {
        "backend": "original",
        "size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        **train_step.timed(warm, times, peak),
    }


#: Where the time goes, by the name of the profiled op.
CATEGORIES = (
    ("convolutions", ("conv", "mkldnn")),
    ("scops_fast losses", ("scops_fast",)),
)


def child_profile(args) -> dict:
    """One profiled step of ours (after a warm-up): self CPU time by category."""
    import torch

    trainer, batch = train_step.build(args.backend, args.size, args.batch)
    trainer.train_step(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train_step(batch)
    totals = {name: 0.0 for name, _ in CATEGORIES}
    totals["other"] = 0.0
    for event in prof.key_averages():
        name = event.key.lower()
        for category, needles in CATEGORIES:
            if any(n in name for n in needles):
                totals[category] += event.self_cpu_time_total
                break
        else:
            totals["other"] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {
        "backend": args.backend,
        "profile_fraction": {k: v / whole for k, v in totals.items()},
    }


# --------------------------------------------------------------------------- parent
def _child(mode: str, args, backend: str = "original") -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), mode]
    cmd += ["--original", str(args.original or ""), "--tps", str(args.tps or "")]
    cmd += ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--guard-gb", str(args.guard_gb)]
    cmd += ["--backend", backend]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(PROTOCOL):
            return json.loads(line[len(PROTOCOL) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"backend": backend, "status": "failed", "error": " | ".join(tail)}


def summary(results: list[dict]) -> str:
    """A Markdown table: seconds per step, peak memory and ratios to the original."""
    ok = {r["backend"]: r for r in results if r.get("status") == "ok"}
    base = ok.get("original")
    lines = [
        "| step | s/step (median) | peak RSS (GiB) | speed vs original | memory vs original |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['backend']} | failed: {r.get('error', '')[:60]} | | | |")
            continue
        t = statistics.median(r["step_seconds"])
        gib = r["hwm_mb"] / 1024
        speed = mem = ""
        if base is not None:
            speed = f"{statistics.median(base['step_seconds']) / t:.2f}x"
            mem = f"{r['hwm_mb'] / base['hwm_mb']:.0%}"
        name = "original" if r["backend"] == "original" else f"scops_fast `{r['backend']}`"
        lines.append(f"| {name} | {t:.1f} | {gib:.2f} | {speed} | {mem} |")
    return "\n".join(lines) + "\n"


def compare(
    original,
    tps,
    *,
    size: int = 256,
    batch: int = 6,
    steps: int = 2,
    warmup: int = 1,
    backends: str = "cpp,reference",
    guard_gb: float = GUARD_GB,
) -> dict:
    """The original's step, then ours per backend, then a profile of our first backend:
    the report that --out writes."""
    import torch

    args = argparse.Namespace(
        original=original,
        tps=tps,
        size=size,
        batch=batch,
        steps=steps,
        warmup=warmup,
        guard_gb=guard_gb,
    )
    results = [_child("original", args)]
    for backend in backends.split(","):
        results.append(
            train_step.run_child(
                backend, size, batch, warmup=warmup, steps=steps, guard_gb=guard_gb
            )
        )
    return {
        "machine": {
            "cpu": memprobe.cpu_model(),
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
        },
        "size": size,
        "batch": batch,
        "results": results,
        "profile": _child("profile", args, backend=backends.split(",")[0]),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="compare", choices=("compare", "original", "profile"))
    p.add_argument("--original", help="a checkout of NVlabs/SCOPS")
    p.add_argument("--tps", help="a checkout of WarBean/tps_stn_pytorch")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--first-step",
        type=int,
        default=0,
        help="original mode: the step index of its first step (1 skips step 0's snapshot)",
    )
    p.add_argument("--backends", default="cpp,reference")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--guard-gb", type=float, default=GUARD_GB)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.mode == "original":
        print(PROTOCOL + json.dumps(child_original(args)), flush=True)
        return 0
    if args.mode == "profile":
        print(PROTOCOL + json.dumps(child_profile(args)), flush=True)
        return 0
    if not args.original or not args.tps:
        p.error("--original and --tps: checkouts of the original code are needed")
    report = compare(
        args.original,
        args.tps,
        size=args.size,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        backends=args.backends,
        guard_gb=args.guard_gb,
    )
    results, profile = report["results"], report["profile"]
    table = summary(results)
    print(table)
    if "profile_fraction" in profile:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in profile["profile_fraction"].items())
        print(f"where a `{profile['backend']}` step's time goes: {shares}")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
