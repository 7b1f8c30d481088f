"""Autograd wrappers and fake (meta) implementations of the compiled custom ops, one
file per op family. Importing a module here requires the compiled library loaded."""

import torch

NATIVE_DTYPES = (torch.float32, torch.float64)


def working_dtype(t: torch.Tensor) -> torch.dtype:
    """Kernels run in float32 or float64; half-precision inputs accumulate in float32."""
    return t.dtype if t.dtype in NATIVE_DTYPES else torch.float32
