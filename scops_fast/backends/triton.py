"""Triton kernels (`scops_fast.triton_kernels`) as torch custom ops `scops_fast_triton::*`
(declared in `scops_fast.ops`): any number of parts, any float dtype.

They run on CUDA tensors. Under TRITON_INTERPRET=1 (read by Triton when the kernels are
decorated, i.e. at import) they also run on CPU tensors through Triton's interpreter:
slow, meant for tests. "auto" never picks this backend for CPU tensors (see
`_dispatch.AUTO_ORDER`).
"""

import os

from scops_fast import ops
from scops_fast.backends import fused_table
from scops_fast.ops import TRITON, compose

ops.register(TRITON)

OPS = fused_table(compose.losses_from(TRITON))


def devices():
    from scops_fast import triton_kernels

    # What counts is how the kernels were decorated, not the variable's value now.
    return ("cuda", "cpu") if triton_kernels.kernel_mode() == "interpreted" else ("cuda",)


def checking_only() -> str | None:
    from scops_fast import triton_kernels

    if triton_kernels.kernel_mode() == "interpreted":
        return "the kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1)"
    return None


def probe():
    try:
        import triton  # noqa: F401
    except Exception as exc:  # missing or broken: report, do not raise
        return f"triton is not importable: {type(exc).__name__}: {exc}"
    import torch

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)"
    from scops_fast import triton_kernels

    mode = triton_kernels.kernel_mode()
    if mode == "mixed":
        return "TRITON_INTERPRET changed after triton was imported: set it before `import triton`"
    if mode == "compiled" and not torch.cuda.is_available():
        return "no CUDA device, and the kernels were imported without TRITON_INTERPRET=1"
    return None
