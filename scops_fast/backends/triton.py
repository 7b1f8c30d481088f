"""Triton kernels (`scops_fast.triton_kernels`) as torch custom ops `scops_fast_triton::*`.

They run on CUDA tensors. Under TRITON_INTERPRET=1 (read by Triton when the kernels are
decorated, i.e. at import) they also run on CPU tensors through Triton's interpreter:
slow, meant for tests. "auto" never picks this backend for CPU tensors (see
`_dispatch.AUTO_ORDER`).
"""

import os

DEVICES: tuple = ("cuda",)
OPS: dict = {}


def probe():
    global DEVICES
    try:
        import triton  # noqa: F401
    except Exception as exc:  # missing or broken: report, do not raise
        return f"triton is not importable: {type(exc).__name__}: {exc}"
    import torch

    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)"
    from scops_fast import triton_kernels
    from scops_fast.ops import compose
    from scops_fast.triton_ops import concentration, equivariance, semantic, warp

    # What counts is how the kernels were decorated, not the variable's value now.
    mode = triton_kernels.kernel_mode()
    if mode == "mixed":
        return "TRITON_INTERPRET changed after triton was imported: set it before `import triton`"
    DEVICES = ("cuda", "cpu") if mode == "interpreted" else ("cuda",)
    if mode == "compiled" and not torch.cuda.is_available():
        return "no CUDA device, and the kernels were imported without TRITON_INTERPRET=1"
    OPS.update(
        compose.losses_from(
            compose.Primitives(
                softmax_moments=concentration.softmax_moments,
                tps_warp=warp.tps_warp_op,
                equivariance=equivariance.equivariance,
                semantic_dense=semantic.semantic_dense,
                semantic_lowres=semantic.semantic_lowres,
            )
        )
    )
    return None
