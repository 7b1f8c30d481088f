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

import torch

#: The compiled libraries' namespace (CPU and CUDA kernels register under it).
NATIVE = "scops_fast"
#: The Triton kernels' namespace.
TRITON = "scops_fast_triton"
#: The CUDA kernels emulated on the CPU, for tests.
CUDA_EMU = "scops_fast_cuda_emu"
FAMILIES = ("concentration", "warp", "equivariance", "semantic")


def tracing() -> bool:
    """True while torch.compile traces, AOTAutograd's trace of the autograd rules included:
    torch 2.11's torch.compiler.is_compiling() is False there (2.14's is True), and the
    rules must not then call .item() on a traced tensor or keep tensors on ctx."""
    if torch.compiler.is_compiling():
        return True
    from torch._guards import TracingContext

    return TracingContext.try_get() is not None


def family(name: str):
    return importlib.import_module(f"scops_fast.ops.{name}")


@functools.cache
def register(namespace: str) -> None:
    """Register every family's fake and autograd rules for `namespace`, once. The native
    ops must exist first: `scops_fast._ext.load` calls this after loading a library."""
    for name in FAMILIES:
        family(name).register(namespace)


def register_autograd(qualname: str, backward, setup_context) -> None:
    """torch.library.register_autograd with a first-derivative-only backward.

    The kernels form first derivatives (some in the forward pass, some in backward ops that
    have no derivative of their own), so a second derivative through them would come out
    as zero, or partial, without a word. Under `create_graph=True` the backward runs
    without recording and hands back gradients whose own backward raises, naming the op
    and the way out: the reference backend, plain ATen ops, differentiates twice. This is
    torch's `once_differentiable` with our message, and with the op's inputs that need a
    gradient as inputs of the raising node, so that `torch.autograd.grad(g, inputs)` reaches
    it (instead of "appears to not have been used in the graph"). Left out while
    torch.compile traces: the compiled backward is not differentiated again."""

    def setup(ctx, inputs, output):
        setup_context(ctx, inputs, output)
        if not tracing():
            # The raising node's edges; in training the graph holds them anyway (the
            # network's output, the basis parameter), so this keeps nothing extra alive.
            ctx.differentiable_inputs = [
                t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad
            ]

    @functools.wraps(backward)
    def first_order(ctx, *grads):
        if not torch.is_grad_enabled() or tracing():
            return backward(ctx, *grads)
        with torch.no_grad():
            out = backward(ctx, *grads)
        outputs = out if isinstance(out, tuple) else (out,)
        inputs = getattr(ctx, "differentiable_inputs", [])
        refuse = torch._C._functions.DelayedError(
            f"{qualname} has first derivatives only: a second derivative through it "
            '(create_graph=True, then backward again) needs backend="reference"'.encode(),
            len(outputs) + len(inputs),
        )
        detached = [None if g is None else g.detach().requires_grad_() for g in outputs]
        wrapped = refuse(*detached, *inputs)[: len(outputs)]
        return wrapped if isinstance(out, tuple) else wrapped[0]

    torch.library.register_autograd(qualname, first_order, setup_context=setup)
