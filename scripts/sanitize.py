"""`make sanitize`: build the C++ kernels of csrc/, and the CUDA kernels of csrc/cuda/ as
their CPU emulation, with AddressSanitizer and UndefinedBehaviorSanitizer into
build/sanitize/, then run the shared suite's cpp and cuda_emu cases (and the robustness
tests) against those libraries.

    python scripts/sanitize.py [--build-only] [--jobs N] [pytest arguments ...]

The instrumented libraries are separate from scops_fast/_C*.so; the package loads them
instead of its own because SCOPS_FAST_EXT_PATH and SCOPS_FAST_EMU_EXT_PATH name them (see
scops_fast/_ext.py).
Python is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD) and leak
detection is off (the interpreter's own allocations would drown the report). Any
sanitizer report aborts the process: the run fails.

Builds are incremental (an object is rebuilt when its source or a csrc/ header is newer),
sequential by default (--jobs raises that), and need only g++ and the venv's torch.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import sysconfig
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
BUILD = ROOT / "build" / "sanitize"
LIBRARY = BUILD / "libscops_fast_sanitize.so"
EMU_LIBRARY = BUILD / "libscops_fast_cuda_emu_sanitize.so"
DEFAULT_TESTS = [
    "tests/test_backends.py",
    "tests/test_cpp_concentration.py",
    "tests/test_robust_validation.py",
    "tests/test_robust_numerics.py",
    "tests/test_robust_properties.py",
    "tests/test_robust_determinism.py",
]
SANITIZERS = "-fsanitize=address,undefined"
CXX = os.environ.get("CXX", "g++")


def compile_flags() -> list[str]:
    import torch
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [str(CSRC), *cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    return [
        "-std=c++20",
        "-fPIC",
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        SANITIZERS,
        # Every finding is fatal, UB included (UBSan only warns by default).
        "-fno-sanitize-recover=all",
        # Bounds checks in std::vector::operator[] and friends.
        "-D_GLIBCXX_ASSERTIONS",
        # The same vectorised and threaded code paths as the release build: at::parallel_for's
        # OpenMP body is inlined from ATen's headers, so without -fopenmp the kernels would
        # run on one thread here and the tiles' thread hand-off would go unchecked.
        "-fopenmp",
        f"-march={os.environ.get('SCOPS_FAST_MARCH', 'native')}",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{p}" for p in includes),
    ]


def link_flags() -> list[str]:
    from torch.utils import cpp_extension

    (torch_lib,) = cpp_extension.library_paths()[:1]
    return [
        "-shared",
        SANITIZERS,
        "-fopenmp",
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
    ]


def run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd if len(cmd) < 12 else [*cmd[:4], "...", *cmd[-3:]]), flush=True)
    subprocess.run(cmd, check=True)


def build_library(library: pathlib.Path, sources, headers, extra: list[str], jobs: int):
    """Compile `sources` (each with `extra` flags) into the sanitized `library`, rebuilding
    an object when its source or any of `headers` is newer."""
    folder = library.parent / library.stem
    folder.mkdir(parents=True, exist_ok=True)
    newest_header = max((h.stat().st_mtime for h in headers), default=0.0)
    flags = [*compile_flags(), *extra]
    # Objects built with other flags (e.g. an older version of this script) are stale too.
    stamp = folder / "flags.txt"
    same_flags = stamp.exists() and stamp.read_text() == shlex.join(flags)
    objects, pending = [], []
    for src in sources:
        obj = folder / (src.name + ".o")
        objects.append(obj)
        stale = not obj.exists() or obj.stat().st_mtime < max(src.stat().st_mtime, newest_header)
        if stale or not same_flags:
            pending.append([CXX, *flags, "-c", str(src), "-o", str(obj)])
    running: list[subprocess.Popen] = []
    for cmd in pending:
        while len(running) >= jobs:
            _wait(running.pop(0))
        print("+ compile", cmd[-3], flush=True)
        running.append(subprocess.Popen(cmd))
    for proc in running:
        _wait(proc)
    stamp.write_text(shlex.join(flags))
    if pending or not library.exists():
        run([CXX, *map(str, objects), *link_flags(), "-o", str(library)])
    return library


def build(jobs: int) -> pathlib.Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    headers = [*CSRC.glob("*.h")]
    build_library(LIBRARY, sorted(CSRC.glob("*.cpp")), headers, [], jobs)
    # The CUDA kernels' code on the CPU (backend "cuda_emu"), as plain C++: its team
    # threads, barriers and fixed-point atomics run under the sanitizers too.
    cuda = CSRC / "cuda"
    build_library(
        EMU_LIBRARY,
        sorted(cuda.glob("*.cu")),
        headers + [*cuda.glob("*.h")],
        ["-x", "c++", "-DSCOPS_FAST_CUDA_EMU=1", f"-I{cuda}", "-pthread"],
        jobs,
    )
    return LIBRARY


def _wait(proc: subprocess.Popen) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"compile failed: {shlex.join(proc.args)}")


def runtime_env(library: pathlib.Path) -> dict:
    def gcc_file(name):
        out = subprocess.run([CXX, f"-print-file-name={name}"], capture_output=True, text=True)
        return out.stdout.strip()

    env = dict(os.environ)
    # libstdc++ right after the ASan runtime: the Python binary does not link it, and
    # ASan's __cxa_throw interceptor must find the real one when it starts.
    preload = (gcc_file("libasan.so"), gcc_file("libstdc++.so"), env.get("LD_PRELOAD"))
    env["LD_PRELOAD"] = " ".join(p for p in preload if p)
    env["ASAN_OPTIONS"] = ":".join(
        [
            "detect_leaks=0",
            "halt_on_error=1",
            "abort_on_error=1",
            # torch and CPython are not built with ASan: their globals look like ODR
            # violations to it when the instrumented library shares a symbol.
            "detect_odr_violation=0",
            "strict_string_checks=1",
            "detect_stack_use_after_return=1",
        ]
    )
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["SCOPS_FAST_EXT_PATH"] = str(library)
    env["SCOPS_FAST_EMU_EXT_PATH"] = str(EMU_LIBRARY)
    env["SCOPS_FAST_SANITIZED"] = "1"
    return env


CHECK_LOADED = """
import scops_fast, torch
report = scops_fast.available_backends()
assert "cpp" in report, report.unavailable.get("cpp")
assert "cuda_emu" in report, report.unavailable.get("cuda_emu")
maps = open("/proc/self/maps").read()
assert "libscops_fast_sanitize.so" in maps, "the sanitized library is not loaded"
assert "libscops_fast_cuda_emu_sanitize.so" in maps, "the sanitized emulation is not loaded"
assert "scops_fast/_C." not in maps, "the release library is loaded too"
assert "libasan" in maps, "the ASan runtime is not loaded"
print("sanitized cpp backend loaded:", torch.ops.scops_fast.softmax_moments)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compiles (default 1)")
    args, pytest_args = parser.parse_known_args(argv)
    t0 = time.perf_counter()
    library = build(max(1, args.jobs))
    t_build = time.perf_counter() - t0
    print(f"built {library.relative_to(ROOT)} in {t_build:.0f} s", flush=True)
    if args.build_only:
        return 0
    env = runtime_env(library)
    subprocess.run([sys.executable, "-c", CHECK_LOADED], env=env, check=True, cwd=ROOT)
    # The shared suite's cases of the sanitized libraries (cpp and cuda_emu), not Triton's.
    tests = pytest_args or [*DEFAULT_TESTS, "-q", "-p", "no:cacheprovider", "-k", "not triton"]
    tests = [t for t in tests if not t.endswith(".py") or (ROOT / t).exists()]
    t1 = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "pytest", *tests], env=env, cwd=ROOT).returncode
    print(
        f"sanitize: build {t_build:.0f} s, tests {time.perf_counter() - t1:.0f} s, "
        f"{'passed' if code == 0 else 'FAILED'}",
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
