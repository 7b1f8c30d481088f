"""CUDA kernels from csrc/cuda/, registered under the same `scops_fast::` ops as the CPU
kernels: the dispatcher sends CUDA tensors to them, through the same composition
(scops_fast/ops/compose.py) as the "cpp" backend.

The pixel kernels keep one value per channel in registers, so they take at most
`MAX_CHANNELS` channels (K + 1 <= 33, csrc/cuda/launch.h); the warp and the dense
semantic loss (cuBLAS) take any number. "auto" passes larger inputs on to "triton".

Verified here: compiled and linked for sm_80 and sm_90, loaded, registered for the CUDA
dispatch key, and the predicates. Not yet run on a GPU.
"""

import torch

from scops_fast import _ext
from scops_fast.backends import channels_at_most, fused_table
from scops_fast.ops import NATIVE, compose

#: kMaxChannels in csrc/cuda/launch.h.
MAX_CHANNELS = 33


def devices():
    return ("cuda",)


#: What the kernels cannot take (shared with the emulation, backend "cuda_emu").
SUPPORTS = {
    "concentration_loss": channels_at_most(MAX_CHANNELS, 0, "pred (K + 1)"),
    "batch_get_centers": channels_at_most(MAX_CHANNELS, 0, "part_probs (K)"),
    "equivariance_losses": channels_at_most(MAX_CHANNELS, 0, "pred (K + 1)"),
    "semantic_consistency_loss_lowres": channels_at_most(MAX_CHANNELS, 1, "pred (K + 1)"),
}

OPS = fused_table(compose.losses_from(NATIVE), supports=SUPPORTS)


def probe():
    reason = _ext.load("_C") or _ext.load("_C_cuda")
    if reason is not None:
        return reason
    if not torch.cuda.is_available():
        return "built, but no CUDA device is visible to torch"
    return None
