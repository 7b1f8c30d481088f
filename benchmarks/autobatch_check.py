"""`scops-train --batch-size auto` checked end to end on the CPU: its choice for SPEC section
8's training step (DeepLab ResNet-50, random weights, cpp losses) under a budget, then the
chosen batch and checkpointing level trained for two steps (the second with SGD's momentum
resident, as every later step) in a fresh child under an address-space guard at the budget.
It passes when the child runs and its resident peak stays under the budget.

    python benchmarks/autobatch_check.py [--size 256] [--budget-gb 8] [--out FILE.json]

About 10 minutes at 256 px and 8 GiB on two cores (`make bench-autobatch`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step  # noqa: E402


def check(size: int, budget_gb: float, backend: str = "cpp", max_batch: int = 64) -> dict:
    from scops_fast.train import autobatch

    cfg = train_step.step_config(backend, size, 1, "lowres", "cpu")
    start = time.monotonic()
    _, choice = autobatch.resolve(
        cfg, "cpu", budget_gb, max_batch, progress=lambda level: print(f"  probed {level}")
    )
    probe_s = time.monotonic() - start
    print(choice.line(size), flush=True)
    level = choice.activation_checkpointing
    run = train_step.run_child(
        backend,
        size,
        choice.batch_size,
        warmup=1,
        steps=1,
        guard_gb=budget_gb,
        overrides={"model.activation_checkpointing": level},
    )
    keep = ("status", "hwm_mb", "peak_mb", "warmup_seconds", "step_seconds", "error")
    ran = {k: run[k] for k in keep if k in run}
    return {
        "size": size,
        "budget_gb": budget_gb,
        "backend": backend,
        "max_batch": max_batch,
        "cpu": train_step.memprobe.cpu_model(),
        "chosen_batch": choice.batch_size,
        "chosen_level": level,
        "per_level": choice.per_level,
        "line": choice.line(size),
        "probe_seconds": round(probe_s, 1),
        "run": ran,
        "passed": ran.get("status") == "ok" and ran["hwm_mb"] <= budget_gb * 1024,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--budget-gb", type=float, default=8.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--out", help="JSON file for the result")
    args = parser.parse_args(argv)
    result = check(args.size, args.budget_gb, max_batch=args.max_batch)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
