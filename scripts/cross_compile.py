"""Compiles the CPU kernels (csrc/*.cpp) for another architecture with a cross compiler, to
object files only: nothing links (this machine has no torch for that architecture) and nothing
runs. It catches what a build on an ARM machine (Grace Hopper, Graviton, Apple silicon under
Linux) would reject first: x86 intrinsics outside their guards, x86-only headers or flags.

    python scripts/cross_compile.py                 # aarch64, with aarch64-linux-gnu-g++
    python scripts/cross_compile.py --cxx riscv64-linux-gnu-g++

The flags are setup.py's CPU_FLAGS, without a -march (setup.py adds none off x86-64), against
the headers of the torch installed here, which are the same on every architecture.
Debian/Ubuntu: `apt install g++-aarch64-linux-gnu`. `make test-arm-compile` runs it.
"""

import argparse
import ast
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup_cpu_flags() -> list[str]:
    """setup.py's CPU_FLAGS, read without running setup.py (which builds)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CPU_FLAGS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit("cross_compile: setup.py defines no CPU_FLAGS list")


def compile_one(cxx: str, flags: list[str], source: pathlib.Path, out: pathlib.Path):
    start = time.perf_counter()
    done = subprocess.run(
        [cxx, *flags, "-c", str(source), "-o", str(out / f"{source.stem}.o")],
        capture_output=True,
        text=True,
    )
    return source, done, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cxx", default="aarch64-linux-gnu-g++", help="the cross compiler")
    parser.add_argument("--jobs", type=int, default=2, help="compilers at once (default 2)")
    args = parser.parse_args(argv)
    if shutil.which(args.cxx) is None:
        print(
            f"cross_compile: --cxx {args.cxx} is not on PATH "
            "(Debian/Ubuntu: apt install g++-aarch64-linux-gnu)",
            file=sys.stderr,
        )
        return 2
    from torch.utils.cpp_extension import include_paths

    target = subprocess.run([args.cxx, "-dumpmachine"], capture_output=True, text=True)
    flags = [
        *setup_cpu_flags(),
        "-fPIC",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        *(f"-I{p}" for p in [str(ROOT / "csrc"), *include_paths(), sysconfig.get_path("include")]),
    ]
    sources = sorted((ROOT / "csrc").glob("*.cpp"))
    print(f"cross_compile: {len(sources)} files for {target.stdout.strip()} with {args.cxx}")
    failed = 0
    with tempfile.TemporaryDirectory() as out, ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(compile_one, args.cxx, flags, s, pathlib.Path(out)) for s in sources]
        for job in jobs:
            source, done, seconds = job.result()
            verdict = "compiled" if done.returncode == 0 else "FAILED"
            print(f"  {source.relative_to(ROOT)}: {verdict} ({seconds:.0f} s)")
            if done.returncode != 0:
                failed += 1
                print(done.stderr[-4000:], file=sys.stderr)
    print(f"cross_compile: {len(sources) - failed} of {len(sources)} compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
