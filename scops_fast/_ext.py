"""Lazy loading of the compiled kernels (csrc/), recording why they are unavailable.

The library registers its ops with `TORCH_LIBRARY(scops_fast, ...)`, so it is loaded
with `torch.ops.load_library` rather than imported as a Python module.

The CPU kernels (`_C`) exist in up to three builds: on x86-64 `_C_avx2` (AVX2 + FMA, any
x86-64 CPU of the last decade) and `_C_avx512` (AVX-512), of which the CPU's best is loaded
(`SCOPS_FAST_CPU_CAPABILITY=avx2|avx512` forces one; an AVX-512 request on a CPU without it
is refused, not crashed); or a single `_C` built for one target (`SCOPS_FAST_MARCH`, other
architectures). Only one is ever loaded: they register the same `scops_fast::` ops.

`SCOPS_FAST_EXT_PATH=/path/to/lib.so` loads that file instead (e.g. the sanitizer build of
`scripts/sanitize.py`); the package's own builds are then not loaded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib

import torch

_PACKAGE = pathlib.Path(__file__).parent
BUILD_ERRORS = _PACKAGE / "_build_errors"
#: Environment variable naming a library to load in place of scops_fast._C.
PATH_VAR = "SCOPS_FAST_EXT_PATH"
#: Environment variable forcing the CPU kernels' instruction-set build.
CAPABILITY_VAR = "SCOPS_FAST_CPU_CAPABILITY"
#: The x86-64 builds, best first: capability -> (library, torch's capabilities that run it).
ISA_BUILDS = {
    "avx512": ("_C_avx512", ("AVX512",)),
    "avx2": ("_C_avx2", ("AVX2", "AVX512")),
}


def _built(name: str):
    spec = importlib.util.find_spec(f"scops_fast.{name}")
    return None if spec is None or spec.origin is None else spec.origin


def cpu_build() -> tuple[str | None, str]:
    """(library name or None, what runs or why nothing can) for the CPU kernels."""
    if _built("_C"):
        return "_C", "kernels built for one target (SCOPS_FAST_MARCH, or not x86-64)"
    cpu = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get(CAPABILITY_VAR)
    if forced:
        if forced not in ISA_BUILDS:
            return None, f"{CAPABILITY_VAR}={forced!r}: expected one of {list(ISA_BUILDS)}"
        library, runs_on = ISA_BUILDS[forced]
        if cpu not in runs_on:
            return None, f"{CAPABILITY_VAR}={forced}: this CPU ({cpu}) cannot run those kernels"
        return library, f"{forced} kernels, forced by {CAPABILITY_VAR}"
    for isa, (library, runs_on) in ISA_BUILDS.items():
        if cpu in runs_on and _built(library):
            return library, f"{isa} kernels, the best this CPU runs: torch reports {cpu}"
    if not any(_built(lib) for lib, _ in ISA_BUILDS.values()):
        return None, None
    return None, f"this CPU ({cpu}) has no AVX2; the kernels need at least AVX2 and FMA"


def cpu_path() -> str | None:
    """Which CPU kernels run in this process, in words (None: none loaded)."""
    library, what = cpu_build()
    return what if library is not None and load("_C") is None else None


@functools.cache
def load(name: str = "_C") -> str | None:
    """Load scops_fast.<name>; None on success, else the reason it cannot be used."""
    override = os.environ.get(PATH_VAR) if name == "_C" else None
    if override:
        if not os.path.isfile(override):
            return f"{PATH_VAR}={override!r} is not a file"
        try:
            torch.ops.load_library(override)
        except Exception as exc:
            return f"{PATH_VAR}={override!r} does not load: {type(exc).__name__}: {exc}"
        return _declare_native_ops()
    if name == "_C":
        library, why = cpu_build()
        if library is None and why is not None:
            return why
        name = library or name
    origin = _built(name)
    if origin is None:
        records = sorted(BUILD_ERRORS.glob(f"{name}*.txt"))
        if records:
            return f"the build failed: {records[0].read_text().strip()[:500]}"
        if name == "_C_cuda":
            return (
                "not built: the CUDA kernels are compiled only where torch sees a GPU at build "
                "time or FORCE_CUDA=1 is set (with nvcc), e.g. FORCE_CUDA=1 pip install "
                "--no-build-isolation ."
            )
        return "not built: run `make install` (or `pip install -e .`) with a C++ compiler"
    try:
        torch.ops.load_library(origin)
    except Exception as exc:
        return f"{origin} does not load: {type(exc).__name__}: {exc}"
    return _declare_native_ops() if name != "_C_cuda" else None


def _declare_native_ops() -> None:
    """The fake and autograd rules of the `scops_fast::` ops, which need their schemas:
    registered as soon as the CPU library (which defines them) is loaded."""
    from scops_fast import ops

    ops.register(ops.NATIVE)
    return None
