"""Lazy loading of the compiled kernels (csrc/), recording why they are unavailable.

The library registers its ops with `TORCH_LIBRARY(scops_fast, ...)`, so it is loaded
with `torch.ops.load_library` rather than imported as a Python module.

The CPU kernels (`_C`) exist in up to three builds: on x86-64 `_C_avx2` (AVX2 + FMA, any
x86-64 CPU of the last decade) and `_C_avx512` (AVX-512), of which the CPU's best is loaded
(`SCOPS_FAST_CPU_CAPABILITY=avx2|avx512` forces one; an AVX-512 request on a CPU without it
is refused, not crashed, and so is a build whose -march level needs a feature that Linux does
not list for the CPU); or a single `_C` built for one target (`SCOPS_FAST_MARCH`, other
architectures). Only one is ever loaded: they register the same `scops_fast::` ops.

`SCOPS_FAST_EXT_PATH=/path/to/lib.so` loads that file instead (e.g. the sanitizer build of
`scripts/sanitize.py`); the package's own builds are then not loaded.
`SCOPS_FAST_EMU_EXT_PATH` does the same for the CUDA emulation (`_C_cuda_emu`).
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
#: Environment variable naming a library to load in place of scops_fast._C_cuda_emu.
EMU_PATH_VAR = "SCOPS_FAST_EMU_EXT_PATH"
OVERRIDES = {"_C": PATH_VAR, "_C_cuda_emu": EMU_PATH_VAR}
#: Environment variable forcing the CPU kernels' instruction-set build.
CAPABILITY_VAR = "SCOPS_FAST_CPU_CAPABILITY"
#: The x86-64 builds, best first: capability -> (library, torch's capabilities that run it).
ISA_BUILDS = {
    "avx512": ("_C_avx512", ("AVX512",)),
    "avx2": ("_C_avx2", ("AVX2", "AVX512")),
}
#: What each build's -march level (x86-64-v3, x86-64-v4) lets the compiler use, as Linux
#: names it in /proc/cpuinfo. Torch's capability checks less (AVX2: AVX2 and FMA; AVX512:
#: F, BW, DQ, VL), and the avx2 build holds BMI2 shifts in its op registration, which runs
#: as it loads: a virtual machine that shows AVX2 but hides BMI2 would die of SIGILL.
MARCH_FEATURES = {
    "avx2": ("avx", "avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "f16c"),
}
MARCH_FEATURES["avx512"] = (
    *MARCH_FEATURES["avx2"],
    *("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
)
MARCH_LEVEL = {"avx2": "x86-64-v3", "avx512": "x86-64-v4"}
CPUINFO = pathlib.Path("/proc/cpuinfo")


def _built(name: str):
    spec = importlib.util.find_spec(f"scops_fast.{name}")
    return None if spec is None or spec.origin is None else spec.origin


def cpu_flags(path: pathlib.Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags as the OS reports them (Linux), or None where it does not."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def lacking_features(isa: str, flags: frozenset[str] | None) -> str | None:
    """Why the CPU cannot run build `isa` although torch's capability allows it (the
    features of its -march level missing from `flags`, the OS's report), or None."""
    if flags is None:  # not Linux: torch's capability is all there is to go by
        return None
    lacking = [f for f in MARCH_FEATURES[isa] if f not in flags]
    if not lacking:
        return None
    return (
        f"this CPU lacks {', '.join(lacking)} (not in {CPUINFO}'s flags), which the {isa} "
        f"kernels need (-march={MARCH_LEVEL[isa]})"
    )


def _torch_reports(cpu: str) -> str:
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return f"{cpu}, as ATEN_CPU_CAPABILITY={forced} asks" if forced else cpu


def cpu_build() -> tuple[str | None, str]:
    """(library name or None, what runs or why nothing can) for the CPU kernels."""
    if _built("_C"):
        return "_C", "kernels built for one target (SCOPS_FAST_MARCH, or not x86-64)"
    cpu, flags = torch.backends.cpu.get_cpu_capability(), cpu_flags()
    forced = os.environ.get(CAPABILITY_VAR)
    if forced:
        if forced not in ISA_BUILDS:
            return None, f"{CAPABILITY_VAR}={forced!r}: expected one of {list(ISA_BUILDS)}"
        library, runs_on = ISA_BUILDS[forced]
        if cpu not in runs_on:
            return None, (
                f"{CAPABILITY_VAR}={forced}: this CPU ({_torch_reports(cpu)}) "
                "cannot run those kernels"
            )
        lacking = lacking_features(forced, flags)
        if lacking:
            return None, f"{CAPABILITY_VAR}={forced}: {lacking}"
        return library, f"{forced} kernels, forced by {CAPABILITY_VAR}"
    refused = None
    for isa, (library, runs_on) in ISA_BUILDS.items():
        if cpu not in runs_on or not _built(library):
            continue
        lacking = lacking_features(isa, flags)
        if lacking is None:
            but = f", but {refused}" if refused else ""
            return library, f"{isa} kernels, the best this CPU runs: torch reports {cpu}{but}"
        refused = lacking
    if not any(_built(lib) for lib, _ in ISA_BUILDS.values()):
        return None, None
    if refused is not None:
        return None, refused
    return None, (
        f"this CPU ({_torch_reports(cpu)}) has no AVX2; the kernels need at least AVX2 and FMA"
    )


def cpu_path() -> str | None:
    """Which CPU kernels run in this process, in words (None: none loaded)."""
    library, what = cpu_build()
    return what if library is not None and load("_C") is None else None


@functools.cache
def load(name: str = "_C") -> str | None:
    """Load scops_fast.<name>; None on success, else the reason it cannot be used."""
    override = os.environ.get(OVERRIDES[name]) if name in OVERRIDES else None
    if override:
        shown = f"{OVERRIDES[name]}={override!r}"
        if not os.path.isfile(override):
            return f"{shown} is not a file"
        origin = override
    else:
        if name == "_C":
            library, why = cpu_build()
            if library is None and why is not None:
                return why
            name = library or name
        origin = _built(name)
        if origin is None:
            return _not_built(name)
        shown = origin
    if name == "_C_cuda_emu":
        reason = _define_emulated_schemas()
        if reason is not None:
            return reason
    try:
        torch.ops.load_library(origin)
    except Exception as exc:
        return f"{shown} does not load: {type(exc).__name__}: {exc}"
    return _declare_rules(name)


#: What serves CUDA tensors when the CUDA kernels are missing.
CUDA_FALLBACK = "on a GPU, the triton backend and the reference still run"


def _not_built(name: str) -> str:
    """Why library `name` is missing: what its build recorded (setup.py writes a record
    for a compile that failed or, for the CUDA kernels, one it skipped), else a guess."""
    stems = [name, *(lib for lib, _ in ISA_BUILDS.values())] if name == "_C" else [name]
    records = [BUILD_ERRORS / f"{stem}.txt" for stem in stems]
    records = [r for r in records if r.is_file()]
    if records:
        text = records[0].read_text().strip()[:500]
        why = text if text.startswith("not built:") else f"the build failed: {text}"
        return f"{why}; {CUDA_FALLBACK}" if name == "_C_cuda" else why
    if name == "_C_cuda":
        return (
            "not built: the CUDA kernels are compiled only where a CUDA toolkit (nvcc) is "
            "found at build time and torch sees a GPU or FORCE_CUDA=1 is set, e.g. "
            f"FORCE_CUDA=1 pip install --no-build-isolation .; {CUDA_FALLBACK}"
        )
    if name == "_C_cuda_emu":
        return (
            "not built: the emulation is built for tests, with SCOPS_FAST_CUDA_EMU=1 "
            "(as `make install` sets)"
        )
    return "not built: run `make install` (or `pip install -e .`) with a C++ compiler"


_emulated_library = None


def _define_emulated_schemas() -> str | None:
    """The `scops_fast_cuda_emu::` schemas: the native ones (defined once, in csrc/), for
    which the emulated library registers CPU kernels when it is loaded."""
    global _emulated_library
    reason = load("_C")
    if reason is not None:
        return f"the CPU library, which defines the schemas, is unavailable: {reason}"
    from scops_fast import ops

    if _emulated_library is None:
        library = torch.library.Library(ops.CUDA_EMU, "FRAGMENT")
        # Every native schema, the CPU-only fused concentration op's included: it simply
        # has no emulated kernel, and the emulated backend never calls it.
        prefix = f"{ops.NATIVE}::"
        for name in sorted(torch._C._dispatch_get_all_op_names()):
            if name.startswith(prefix):
                op = getattr(torch.ops.scops_fast, name.removeprefix(prefix))
                library.define(str(op.default._schema).removeprefix(prefix))
        _emulated_library = library
    return None


def _declare_rules(name: str) -> None:
    """The fake and autograd rules of a loaded library's ops, which need their schemas:
    the CPU library defines the `scops_fast::` ones, the emulation's are copied from them;
    the CUDA library only adds kernels."""
    from scops_fast import ops

    if name == "_C_cuda_emu":
        ops.register(ops.CUDA_EMU)
    elif name != "_C_cuda":
        ops.register(ops.NATIVE)
    return None
