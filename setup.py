"""Builds the compiled kernels of csrc/ next to the pure-Python package.

- scops_fast._C: the CPU kernels (csrc/*.cpp), always.
- scops_fast._C_cuda: the CUDA kernels (csrc/cuda/), when torch sees a GPU or
  FORCE_CUDA=1 (CI compiles them for sm_80 and sm_90 without a GPU).

A failed compile does not fail the install unless SCOPS_FAST_STRICT_BUILD=1 (as
`make test` sets): the package stays importable, and `available_backends()` reports
the compiler's error as the reason the backend is unavailable.
"""

import glob
import os
import pathlib

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
    # The package is built where it runs, so target the build machine by default.
    f"-march={os.environ.get('SCOPS_FAST_MARCH', 'native')}",
    "-std=c++20",
]


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    import torch

    return torch.cuda.is_available()


def cuda_home_default():
    # The machine's nvcc may be a wrapper script on PATH; torch would then guess the
    # wrong CUDA_HOME from it.
    if "CUDA_HOME" not in os.environ and pathlib.Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def extensions():
    from torch.utils.cpp_extension import CppExtension

    exts = []
    sources = sorted(glob.glob("csrc/*.cpp"))
    if sources:
        exts.append(
            CppExtension(
                "scops_fast._C",
                sources,
                include_dirs=[str(ROOT / "csrc")],
                extra_compile_args=CPU_FLAGS,
                extra_link_args=["-fopenmp"],
            )
        )
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    if cuda_sources and want_cuda():
        import torch
        from torch.utils.cpp_extension import CUDAExtension

        # Torch's CUDA headers include cusparse.h, shipped by the pip nvidia packages.
        pip_cuda = pathlib.Path(torch.__file__).parents[1] / "nvidia" / "cu13" / "include"
        exts.append(
            CUDAExtension(
                "scops_fast._C_cuda",
                cuda_sources,
                include_dirs=[str(ROOT / "csrc"), str(ROOT / "csrc" / "cuda"), str(pip_cuda)],
                extra_compile_args={
                    "cxx": ["-O3", "-std=c++20"],
                    "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"],
                },
            )
        )
    return exts


def build_command():
    from torch.utils.cpp_extension import BuildExtension

    class TolerantBuildExtension(BuildExtension):
        def build_extension(self, ext):
            record = BUILD_ERRORS / f"{ext.name.split('.')[-1]}.txt"
            try:
                super().build_extension(ext)
            except Exception as exc:
                if os.environ.get("SCOPS_FAST_STRICT_BUILD") == "1":
                    raise
                BUILD_ERRORS.mkdir(exist_ok=True)
                record.write_text(f"{type(exc).__name__}: {exc}\n")
                print(f"warning: building {ext.name} failed; it will be reported unavailable")
            else:
                record.unlink(missing_ok=True)

    return TolerantBuildExtension.with_options(use_ninja=True)


if os.environ.get("SCOPS_FAST_NO_EXTENSIONS") == "1":
    setup()
else:
    cuda_home_default()
    # Without a GPU to ask, build for the Ampere and Hopper data-centre parts.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    setup(ext_modules=extensions(), cmdclass={"build_ext": build_command()})
