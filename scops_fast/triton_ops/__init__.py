"""Backend "triton": the kernels of `scops_fast.triton_kernels` as torch custom ops
`scops_fast_triton::*` with fake (meta) implementations and autograd rules, so that
torch.compile(fullgraph=True) sees one opaque op per kernel family. The SPEC losses are
composed from them by `scops_fast.ops.compose`, exactly as for the cpp backend."""

import contextlib

import torch


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
