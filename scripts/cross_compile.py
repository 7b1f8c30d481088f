"""Compiles the CPU kernels (csrc/*.cpp) and the CUDA kernels' CPU emulation (csrc/cuda, as
`_C_cuda_emu`) for another architecture with a cross compiler, to object files only: nothing
links (this machine has no torch for that architecture) and nothing runs. It catches what a
build on an ARM machine (Grace Hopper, Graviton, Apple silicon under Linux) would reject
first: x86 intrinsics outside their guards, x86-only headers or flags.

    python scripts/cross_compile.py                 # aarch64, with aarch64-linux-gnu-g++
    python scripts/cross_compile.py --cxx riscv64-linux-gnu-g++

The flags are setup.py's CPU_FLAGS (without a -march: setup.py adds none off x86-64) and
EMU_FLAGS, against the headers of the torch installed here, which are the same on every
architecture, and of this Python: a Debian system Python's headers include a per-architecture
pyconfig.h (from its package for that architecture); pyenv's or a venv's of it do not.
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


def setup_flags(name: str) -> list[str]:
    """A list of flags setup.py defines (CPU_FLAGS, EMU_FLAGS), read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"cross_compile: setup.py defines no {name} list")


def emulation_unit(folder: pathlib.Path) -> pathlib.Path:
    """One C++ file of every CUDA source, as setup.py builds `_C_cuda_emu` (which `make test`
    builds on every architecture)."""
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + sorted(
        (ROOT / "csrc" / "cuda").glob("*.cpp")
    )
    unit = folder / "cuda_emu.cpp"
    unit.write_text("".join(f'#include "{src}"\n' for src in sources))
    return unit


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
            "(Debian/Ubuntu: apt install g++-<its architecture>-linux-gnu)",
            file=sys.stderr,
        )
        return 2
    from torch.utils.cpp_extension import include_paths

    target = subprocess.run([args.cxx, "-dumpmachine"], capture_output=True, text=True)
    common = [
        "-fPIC",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        *(f"-I{p}" for p in [str(ROOT / "csrc"), *include_paths(), sysconfig.get_path("include")]),
    ]
    cpu = [*setup_flags("CPU_FLAGS"), *common]
    emu = [*setup_flags("EMU_FLAGS"), *common, f"-I{ROOT / 'csrc' / 'cuda'}"]
    emu.append("-DSCOPS_FAST_CUDA_EMU=1")
    with tempfile.TemporaryDirectory() as out, ThreadPoolExecutor(args.jobs) as pool:
        out = pathlib.Path(out)
        units = [(s, cpu) for s in sorted((ROOT / "csrc").glob("*.cpp"))]
        units.append((emulation_unit(out), emu))
        print(f"cross_compile: {len(units)} files for {target.stdout.strip()} with {args.cxx}")
        failed = 0
        jobs = [pool.submit(compile_one, args.cxx, flags, s, out) for s, flags in units]
        for job in jobs:
            source, done, seconds = job.result()
            verdict = "compiled" if done.returncode == 0 else "FAILED"
            name = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source.name
            print(f"  {name}: {verdict} ({seconds:.0f} s)")
            if done.returncode != 0:
                failed += 1
                print(done.stderr[-4000:], file=sys.stderr)
    print(f"cross_compile: {len(units) - failed} of {len(units)} compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
