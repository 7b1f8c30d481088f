"""The op layer: one module per op family (`concentration`, `warp`, `equivariance`,
`semantic`). Each declares its primitives once for every namespace that implements
them:

- `scops_fast::` -- the compiled libraries (csrc/ for CPU tensors, csrc/cuda/ for CUDA
  tensors), whose schemas are defined in C++;
- `scops_fast_triton::` -- the Triton kernels (`scops_fast.triton_kernels`), defined here
  as torch custom ops whose bodies import the kernels on first call;
- `scops_fast_cuda_emu::` -- the CUDA kernels' code compiled for the CPU (csrc/cuda/
  emulate.h), under the native schemas (copied by `scops_fast._ext`).

For each it registers the same fake (meta) implementation and autograd rule, so
torch.compile sees one opaque op per primitive and the backward is written once.
`compose.py` builds the public losses from a namespace's primitives.
"""

from __future__ import annotations

import functools
import importlib

#: The compiled libraries' namespace (CPU and CUDA kernels register under it).
NATIVE = "scops_fast"
#: The Triton kernels' namespace.
TRITON = "scops_fast_triton"
#: The CUDA kernels emulated on the CPU, for tests.
CUDA_EMU = "scops_fast_cuda_emu"
FAMILIES = ("concentration", "warp", "equivariance", "semantic")


def family(name: str):
    return importlib.import_module(f"scops_fast.ops.{name}")


@functools.cache
def register(namespace: str) -> None:
    """Register every family's fake and autograd rules for `namespace`, once. The native
    ops must exist first: `scops_fast._ext.load` calls this after loading a library."""
    for name in FAMILIES:
        family(name).register(namespace)
