"""CUDA kernels from csrc/cuda/, registered under the same `scops_fast::` ops as the
CPU kernels: the dispatcher sends CUDA tensors to them. The Python composition
(scops_fast/ops/) is shared with the "cpp" backend.

Verified here: compiled and linked for sm_80 and sm_90, loaded, and registered for the
CUDA dispatch key. Not yet run on a GPU.
"""

import torch

from scops_fast import _ext

DEVICES = ("cuda",)
OPS: dict = {}


def probe():
    reason = _ext.load("_C") or _ext.load("_C_cuda")
    if reason is not None:
        return reason
    if not torch.cuda.is_available():
        return "built, but no CUDA device is visible to torch"
    from scops_fast.backends import cpp

    cpp.probe()  # registers the shared op wrappers
    OPS.update(cpp.OPS)
    return None
