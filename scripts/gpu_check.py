"""`make gpu-check`: everything a GPU can tell us, in one command of at most 8 minutes.

On a machine with an NVIDIA GPU and a fresh checkout (after `make install`):
1. builds the CUDA kernels for this GPU's architecture only (TORCH_CUDA_ARCH_LIST from
   torch.cuda.get_device_capability());
2. runs the CUDA part of the shared suite (tests/test_backends.py: the cuda, triton and
   reference backends on CUDA tensors) and the dispatch tests;
3. runs benchmarks/gpu_bench.py (every op and backend against eager, torch.compile and a
   device-to-device copy) into benchmarks/results/gpu-<device>.json and .md.

It writes benchmarks/results/gpu-<device>-check.json with each step's outcome and time.
Without a GPU it prints one line and exits 0. `--dry-run` prints the steps it would run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUDGET_S = 8 * 60
# Seconds each step may take; together within the budget.
LIMITS = {"build": 240, "suite": 150, "bench": 90}


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def steps(arch: str, slug: str) -> list[tuple[str, list[str], dict]]:
    """(name, command, extra environment) of each step."""
    py = sys.executable
    build_env = {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "SCOPS_FAST_STRICT_BUILD": "1"}
    return [
        ("build", [py, "setup.py", "-q", "build_ext", "--inplace"], build_env),
        (
            "suite",
            [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
            + [
                "tests/test_backends.py",
                "-k",
                "cuda",
                "tests/test_api.py",
                "tests/test_cuda_build.py",
            ],
            {},
        ),
        (
            "bench",
            [py, "benchmarks/gpu_bench.py", "--size", "celeba"]
            + ["--out", str(RESULTS / f"gpu-{slug}.json")],
            {},
        ),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not args.dry_run:
        print("gpu-check: skipped, no CUDA device is visible to torch on this machine.")
        return 0
    if gpu:
        major, minor = torch.cuda.get_device_capability()
        name = torch.cuda.get_device_name()
        slug, arch = device_slug(name), f"{major}.{minor}"
    else:  # a dry run without a GPU shows the steps with placeholders
        name, slug, arch = "<device>", "<device>", "<arch>"
    plan = steps(arch, slug)
    if args.dry_run:
        for step, cmd, env in plan:
            print(f"{step}: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(cmd)}")
        return 0
    record = {"device": name, "capability": arch, "torch": torch.__version__, "steps": {}}
    start, failed = time.monotonic(), False
    for step, cmd, env in plan:
        left = BUDGET_S - (time.monotonic() - start)
        limit = min(LIMITS[step], max(left, 1))
        t0 = time.monotonic()
        print(f"gpu-check: {step} (at most {limit:.0f} s)", flush=True)
        try:
            done = subprocess.run(
                cmd,
                cwd=ROOT,
                env={**os.environ, **env},
                timeout=limit,
                text=True,
                capture_output=True,
            )
            code, tail = done.returncode, (done.stdout + done.stderr)[-4000:]
        except subprocess.TimeoutExpired as exc:
            code, tail = "timeout", str(exc.stdout or "")[-4000:]
        print(tail, flush=True)
        record["steps"][step] = {"returncode": code, "seconds": time.monotonic() - t0, "tail": tail}
        if code != 0:
            failed = True
            if step == "build":
                break
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gpu-{slug}-check.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"gpu-check: {'FAILED' if failed else 'passed'}; record in {out.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
