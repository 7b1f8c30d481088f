"""The CUDA kernels of csrc/cuda/ compiled as plain C++ and run on CPU tensors by a small
emulation of the CUDA execution model (csrc/cuda/emulate.h): blocks in a shuffled order,
each a team of fibers, one per CUDA thread, run in a shuffled order between
__syncthreads() barriers, the compiler's atomics.

For checking only: it is slow, "auto" never picks it, and it proves the kernels'
arithmetic, indexing, reductions and determinism under reordering, not their speed or
behaviour on a real GPU. Built by `make install` (SCOPS_FAST_CUDA_EMU=1).
"""

from scops_fast import _ext
from scops_fast.backends import fused_table
from scops_fast.backends.cuda import SUPPORTS
from scops_fast.ops import CUDA_EMU, compose


def devices():
    return ("cpu",)


OPS = fused_table(compose.losses_from(CUDA_EMU), supports=SUPPORTS)


def describe() -> str:
    return "the CUDA kernels emulated on the CPU: slow, for checking only, never picked by auto"


def checking_only() -> str:
    return "the CUDA kernels emulated on the CPU, one thread at a time"


def probe():
    return _ext.load("_C_cuda_emu")
