"""Activation checkpointing of the part segmenters' blocks (`model.activation_checkpointing`):
fewer activations kept for the backward, paid for with recomputation in it.

- "none": every activation the backward needs is kept (torch's default).
- "blocks": each residual block (and the classifier) keeps only its input; its forward
  runs again in the backward.
- "stages": the same, a whole stage (ResNet layer) at a time: fewer inputs kept, but the
  backward holds a whole stage's recomputed activations at once (make bench-levers
  measures whether that pays).
- "selective": the convolutions' outputs are kept, and the backward recomputes only the
  cheap BatchNorm, ReLU and additions from them, a stage (ResNet layer) at a time. Not
  block by block: a region also keeps its input, and a bottleneck block's input is two
  thirds the size of its convolutions' outputs together; with per-block regions the
  two forwards of a ResNet-50 step (256x256, batch 2) left 15% less resident than
  without checkpointing, with per-stage regions 36% less.

Both use torch.utils.checkpoint (non-reentrant; selective through torch's selective
checkpoint policies), and only where a graph is recorded: in training mode with grad
enabled. Evaluation and prediction run the plain forward.

BatchNorm in training mode updates its running statistics in its forward, and a
recomputation would update them a second time. The recomputation therefore runs with
those buffers saved and put back afterwards: they end each step as without
checkpointing, bit for bit, and the recomputed outputs, which in training mode depend
only on the batch, are the first forward's.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

#: Values of `model.activation_checkpointing` / `PartSegmenter.activation_checkpointing`.
ACTIVATION_CHECKPOINTING = ("none", "blocks", "stages", "selective")

# What "selective" keeps. The policy sees the ops beneath autograd, where every 2-D
# convolution is aten.convolution (conv2d decomposes into it; the backend's own kernels,
# mkldnn or cudnn, run beneath the policy's mode).
_KEPT_OPS = frozenset({torch.ops.aten.convolution.default})


def _keep_convolutions(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def check_mode(mode: str) -> str:
    if mode not in ACTIVATION_CHECKPOINTING:
        raise ValueError(
            f"activation_checkpointing: expected one of {list(ACTIVATION_CHECKPOINTING)}, "
            f"got {mode!r}"
        )
    return mode


class _RunningStatisticsKept:
    """The recomputation's context: the BatchNorm buffers of `module` (running mean,
    variance, batch count) as they were before it, whatever it does to them.

    Saved when the recomputation starts, not at the first forward: the objective runs
    the network twice per step (images, then warped images), so a block's first
    forward is not the last to update its statistics. Re-enterable (a graph kept with
    retain_graph may be recomputed again), and `inner` (selective checkpointing's
    recompute mode) is entered inside it, so that saving and restoring are not seen
    by that mode as ops of the region."""

    def __init__(self, module: nn.Module, inner=None):
        self.module = module
        self.inner = inner if inner is not None else contextlib.nullcontext()
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self):
        self.saved = [
            (buffer, buffer.clone())
            for m in self.module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buffer in m.buffers(recurse=False)
        ]
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            return self.inner.__exit__(*exc)
        finally:
            with torch.no_grad():
                for buffer, value in self.saved:
                    buffer.copy_(value)
            self.saved = []


def _contexts(module: nn.Module, mode: str):
    if mode in ("blocks", "stages"):
        return contextlib.nullcontext(), _RunningStatisticsKept(module)
    forward, recompute = create_selective_checkpoint_contexts(_keep_convolutions)
    return forward, _RunningStatisticsKept(module, recompute)


def run_stages(stages, x: torch.Tensor, mode: str) -> torch.Tensor:
    """`x` through each block of each stage (nn.Sequential) in turn, checkpointed as
    `mode` says: "blocks" block by block, "stages" and "selective" stage by stage."""
    for stage in stages:
        if mode in ("stages", "selective"):
            x = run(stage, x, mode)
        else:
            for block in stage:
                x = run(block, x, mode)
    return x


def run(module: nn.Module, x: torch.Tensor, mode: str):
    """`module(x)`, checkpointed as `mode` says when a graph is being recorded."""
    if mode == "none" or not (module.training and torch.is_grad_enabled()):
        return module(x)
    return checkpoint(
        module,
        x,
        use_reentrant=False,
        context_fn=functools.partial(_contexts, module, mode),
    )
