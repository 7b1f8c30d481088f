"""Builds the compiled kernels of csrc/ next to the pure-Python package.

- the CPU kernels (csrc/*.cpp), always. On x86-64 they are built twice, for a portable
  baseline and for AVX-512: scops_fast._C_avx2 (-march=x86-64-v3: AVX2 and FMA) and
  scops_fast._C_avx512 (-march=x86-64-v4), and scops_fast/_ext.py loads the one the CPU
  runs (SCOPS_FAST_CPU_CAPABILITY=avx2|avx512 forces one), so a wheel or a shared install
  runs on every x86-64 node of a cluster. SCOPS_FAST_MARCH=native (or any -march value)
  builds a single scops_fast._C for that target instead; other architectures build one
  scops_fast._C with the compiler's default target.
- scops_fast._C_cuda: the CUDA kernels (csrc/cuda/), where a CUDA toolkit (nvcc) is found
  and torch sees a GPU, or FORCE_CUDA=1 asks (CI compiles them for sm_80 and sm_90 without
  a GPU); FORCE_CUDA=auto (as `make` sets): wherever nvcc is found; FORCE_CUDA=0: never.
  Without a toolkit the rest still builds, and a record in scops_fast/_build_errors says
  why the CUDA kernels were not built (SCOPS_FAST_STRICT_BUILD=1 with FORCE_CUDA=1 fails
  instead, before compiling anything).
- scops_fast._C_cuda_emu: the same CUDA sources compiled as C++ for the CPU
  (csrc/cuda/emulate.h), when SCOPS_FAST_CUDA_EMU=1 (as `make` sets): backend "cuda_emu",
  which runs the CUDA kernels' code on CPU tensors for the tests.

A failed compile does not fail the install unless SCOPS_FAST_STRICT_BUILD=1 (as
`make test` sets): the package stays importable, and `available_backends()` reports
the compiler's error as the reason the backend is unavailable.

SCOPS_FAST_EXTENSIONS=gpu builds only what a GPU run needs (scripts/gpu_check.py): the
CUDA kernels and one CPU library, which defines the ops' schemas (on x86-64 the AVX2
build, whose objects `make install` has already compiled), not the AVX-512 build nor the
emulation; other libraries already in the tree are left as they are.

A wheel pins the torch it was built against (its kernels use that torch's C++ ABI); an
in-place or editable build does not pin it in its metadata, since it is rebuilt where it
lives (`make install`, or scripts/gpu_check.py on a machine with its own torch).
"""

import glob
import os
import pathlib
import platform
import shutil
import sys
import sysconfig

from setuptools import setup

ROOT = pathlib.Path(__file__).parent
BUILD_ERRORS = ROOT / "scops_fast" / "_build_errors"
CPU_FLAGS = [
    "-O3",
    # Threads come from at::parallel_for, whose OpenMP implementation is inlined from
    # ATen's headers: without -fopenmp its `omp parallel` is ignored and every kernel
    # ran on one thread. The runtime is torch's own libgomp.so.1, already loaded by
    # the time the extension is. `omp simd` vectorises the reductions.
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-std=c++20",
    # Python's own CFLAGS carry -g: debug information for ATen's templates doubled each
    # file's compile time (30 s to 16 s here) for a library nobody steps through.
    "-g0",
]
#: The CUDA kernels' CPU emulation (`_C_cuda_emu`), compiled as C++ with SCOPS_FAST_CUDA_EMU.
EMU_FLAGS = ["-O2", "-std=c++20", "-pthread", "-g0"]
#: The x86-64 builds: library suffix -> target flags. x86-64-v4 is AVX-512 F/BW/CD/DQ/VL
#: (what torch calls AVX512); its loops are asked to use the full 512-bit registers.
X86_VARIANTS = {
    "avx2": ["-march=x86-64-v3"],
    "avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
}


def extension_set() -> str:
    """The libraries to build (SCOPS_FAST_EXTENSIONS; the module docstring says what
    each builds): "all", the default, or "gpu"."""
    chosen = os.environ.get("SCOPS_FAST_EXTENSIONS", "all") or "all"
    if chosen not in ("all", "gpu"):
        raise SystemExit(f"error: SCOPS_FAST_EXTENSIONS={chosen!r}: expected all or gpu")
    return chosen


def cpu_variants() -> dict[str, list[str]]:
    """{extension name: target flags} of the CPU libraries to build."""
    march = os.environ.get("SCOPS_FAST_MARCH")
    if march:
        return {"scops_fast._C": [f"-march={march}"]}
    if platform.machine().lower() in ("x86_64", "amd64"):
        isas = ("avx2",) if extension_set() == "gpu" else tuple(X86_VARIANTS)
        return {f"scops_fast._C_{isa}": X86_VARIANTS[isa] for isa in isas}
    return {"scops_fast._C": []}


def remove_stale_builds(names) -> None:
    """In-place builds: drop CPU libraries of the other layout (one `_C` vs the x86-64
    pair), which the loader would otherwise find first."""
    keep = {n.rsplit(".", 1)[-1] for n in names}
    for lib in (ROOT / "scops_fast").glob("_C*.so"):
        stem = lib.name.split(".", 1)[0]
        if stem not in ("_C_cuda", "_C_cuda_emu") and stem not in keep:
            lib.unlink()


def variant_sources(name: str, sources: list[str]) -> list[str]:
    """Per-variant wrappers that include the real sources, so that each variant compiles
    into objects of its own (one build folder holds them all)."""
    folder = ROOT / "build" / "isa_sources" / name.rsplit(".", 1)[-1]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        wrapper = folder / pathlib.Path(src).name
        text = f'#include "{(ROOT / src).resolve()}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        out.append(str(wrapper.relative_to(ROOT)))
    return out


def unity_source(name: str, sources: list[str], suffix: str) -> str:
    """One translation unit that includes every source in turn. Each CUDA source pulls in
    ATen and torch/library.h, which nvcc parses for the host and again for every GPU
    architecture: in one unit they are parsed once (the CUDA build fell from about 190 s to
    60 s here). scripts/sanitize.py still compiles each source on its own, so a source
    that leans on another's includes fails there."""
    folder = ROOT / "build" / "unity"
    folder.mkdir(parents=True, exist_ok=True)
    unit = folder / (name.rsplit(".", 1)[-1] + suffix)
    text = "".join(f'#include "{(ROOT / src).resolve()}"\n' for src in sources)
    if not unit.exists() or unit.read_text() != text:
        unit.write_text(text)
    return str(unit.relative_to(ROOT))


def cuda_toolkit() -> tuple[str | None, str]:
    """(the CUDA toolkit's root, how it was found), or (None, what was looked for).

    Torch's own order (CUDA_HOME or CUDA_PATH, then nvcc on PATH, then /usr/local/cuda),
    except that /usr/local/cuda comes before PATH: the machine's nvcc may be a wrapper
    script on PATH, from which torch would guess the wrong root. The root counts only
    where it holds bin/nvcc, which torch's build runs."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            home = os.environ[var]
            if pathlib.Path(home, "bin", "nvcc").exists():
                return home, f"{var}={home}"
            return None, f"{var}={home} holds no bin/nvcc"
    if pathlib.Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda", "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        home = str(pathlib.Path(nvcc).parent.parent)
        if pathlib.Path(home, "bin", "nvcc").exists():
            return home, f"nvcc on PATH ({nvcc})"
    return None, "no nvcc on PATH, no /usr/local/cuda, CUDA_HOME unset"


def cuda_plan() -> tuple[bool, str]:
    """(compile the CUDA kernels?, why not, as a record says it)."""
    force = os.environ.get("FORCE_CUDA", "")
    if force not in ("", "0", "1", "auto"):
        raise SystemExit(f"error: FORCE_CUDA={force!r}: expected 1, 0 or auto")
    if force == "0":
        return False, "not built: FORCE_CUDA=0 at build time"
    home, found = cuda_toolkit()
    if home is not None:
        # Set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = home
    if force == "":
        import torch

        if not torch.cuda.is_available():
            return False, (
                "not built: torch saw no GPU at build time and FORCE_CUDA was unset "
                "(FORCE_CUDA=1 compiles them without one, with nvcc)"
            )
    if home is None:
        why = f"no CUDA toolkit found at build time ({found})"
        if force == "1" and os.environ.get("SCOPS_FAST_STRICT_BUILD") == "1":
            raise SystemExit(
                f"error: FORCE_CUDA=1 asks for the CUDA kernels, but {why}: set CUDA_HOME "
                "to a CUDA toolkit, or build without them (FORCE_CUDA=0 or auto)"
            )
        print(f"warning: not building the CUDA kernels: {why}")
        return False, f"not built: {why}"
    return True, ""


def extensions(cuda: bool):
    from torch.utils.cpp_extension import CppExtension

    exts = []
    sources = sorted(glob.glob("csrc/*.cpp"))
    variants = cpu_variants() if sources else {}
    if extension_set() == "all":
        remove_stale_builds(variants)
    for name, target in variants.items():
        exts.append(
            CppExtension(
                name,
                # The x86-64 builds compile from wrappers of their own, whichever subset
                # is built, so that every build finds its objects where the last one left
                # them (build/temp.*).
                variant_sources(name, sources) if name != "scops_fast._C" else sources,
                include_dirs=[str(ROOT / "csrc")],
                extra_compile_args=[*CPU_FLAGS, *target],
                extra_link_args=["-fopenmp"],
            )
        )
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    if cuda_sources and cuda:
        import torch
        from torch.utils.cpp_extension import CUDAExtension

        # Torch's CUDA headers include cusparse.h, shipped by the pip nvidia packages.
        pip_cuda = pathlib.Path(torch.__file__).parents[1] / "nvidia" / "cu13" / "include"
        exts.append(
            CUDAExtension(
                "scops_fast._C_cuda",
                [unity_source("scops_fast._C_cuda", cuda_sources, ".cu")],
                include_dirs=[str(ROOT / "csrc"), str(ROOT / "csrc" / "cuda"), str(pip_cuda)],
                extra_compile_args={
                    "cxx": ["-O3", "-std=c++20", "-g0"],
                    # --threads: the architectures compile side by side.
                    "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "--threads=2"],
                },
            )
        )
    emulation = os.environ.get("SCOPS_FAST_CUDA_EMU") == "1" and extension_set() == "all"
    if cuda_sources and emulation:
        # The same CUDA sources as plain C++ on the CPU (csrc/cuda/emulate.h): backend
        # "cuda_emu", for tests.
        exts.append(
            CppExtension(
                "scops_fast._C_cuda_emu",
                [unity_source("scops_fast._C_cuda_emu", cuda_sources, ".cpp")],
                include_dirs=[str(ROOT / "csrc"), str(ROOT / "csrc" / "cuda")],
                define_macros=[("SCOPS_FAST_CUDA_EMU", "1")],
                extra_compile_args=EMU_FLAGS,
                extra_link_args=["-pthread"],
            )
        )
    return exts


def object_folder() -> pathlib.Path:
    """Where compiled objects stay between builds: setuptools' own folder for a wheel,
    which an editable install (a temporary folder otherwise) shares, so that `make install`
    recompiles only what changed and a wheel built from the checkout afterwards links the
    objects it already has (ninja checks each command line and header)."""
    tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    return ROOT / "build" / f"temp.{tag}"


def build_command(cuda_not_built: str):
    """build_ext that records, beside the libraries it writes (the source tree for an
    in-place or editable build, the wheel's contents otherwise), why a library is missing:
    a compile that failed, or the CUDA kernels skipped (`cuda_not_built`)."""
    from torch.utils.cpp_extension import BuildExtension

    class TolerantBuildExtension(BuildExtension):
        def finalize_options(self):
            if self.build_temp is None or getattr(self, "editable_mode", False):
                self.build_temp = str(object_folder())
            super().finalize_options()

        def records(self) -> pathlib.Path:
            if self.inplace or getattr(self, "editable_mode", False):
                return BUILD_ERRORS
            return pathlib.Path(self.build_lib) / "scops_fast" / "_build_errors"

        def run(self):
            records = self.records()
            if records != BUILD_ERRORS:
                shutil.rmtree(records, ignore_errors=True)  # a wheel holds this build's only
            cuda_record = records / "_C_cuda.txt"
            if cuda_not_built:
                # A library left by an earlier in-place build stays and loads; this says
                # why none was built.
                records.mkdir(parents=True, exist_ok=True)
                cuda_record.write_text(cuda_not_built + "\n")
            else:
                cuda_record.unlink(missing_ok=True)  # the build writes one if it fails
            super().run()

        def build_extension(self, ext):
            records = self.records()
            record = records / f"{ext.name.split('.')[-1]}.txt"
            try:
                super().build_extension(ext)
            except Exception as exc:
                if os.environ.get("SCOPS_FAST_STRICT_BUILD") == "1":
                    raise
                records.mkdir(parents=True, exist_ok=True)
                record.write_text(f"{type(exc).__name__}: {exc}\n")
                print(f"warning: building {ext.name} failed; it will be reported unavailable")
            else:
                record.unlink(missing_ok=True)

    return TolerantBuildExtension.with_options(use_ninja=True)


TORCH_REQUIREMENT = "torch>=2.4"


def pinned_torch() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def wheel_command():
    """bdist_wheel that pins, in the wheel's own metadata, the torch its kernels were built
    against. The metadata prepared before the build (which an editable install keeps)
    says TORCH_REQUIREMENT: pip prepares it once for both kinds of build, so only the
    wheel's last step can tell them apart."""
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools before 70.1: the wheel package's own
        from wheel.bdist_wheel import bdist_wheel

    class PinningBdistWheel(bdist_wheel):
        def write_wheelfile(self, wheelfile_base, *args, **kwargs):
            # editable_wheel borrows this method to write its own wheel's WHEEL file.
            if "editable_wheel" not in sys.argv:
                metadata = pathlib.Path(wheelfile_base) / "METADATA"
                lines = metadata.read_text().split("\n")
                pin = f"Requires-Dist: {pinned_torch()}"
                pinned = [
                    pin if line.startswith("Requires-Dist: torch>") else line for line in lines
                ]
                if pin not in pinned:
                    raise SystemExit(f"error: no torch requirement to pin in {metadata}")
                metadata.write_text("\n".join(pinned))
            super().write_wheelfile(wheelfile_base, *args, **kwargs)

    return PinningBdistWheel


REQUIREMENTS = [TORCH_REQUIREMENT, "torchvision", "numpy", "pillow"]

if os.environ.get("SCOPS_FAST_NO_EXTENSIONS") == "1":
    setup(install_requires=REQUIREMENTS)
else:
    cuda, why_not = cuda_plan()
    # Without a GPU to ask, build for the Ampere and Hopper data-centre parts.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    setup(
        ext_modules=extensions(cuda),
        cmdclass={
            "build_ext": build_command("" if cuda else why_not),
            "bdist_wheel": wheel_command(),
        },
        install_requires=REQUIREMENTS,
    )
