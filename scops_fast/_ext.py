"""Lazy loading of the compiled kernels (csrc/), recording why they are unavailable.

The library registers its ops with `TORCH_LIBRARY(scops_fast, ...)`, so it is loaded
with `torch.ops.load_library` rather than imported as a Python module.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import torch

_PACKAGE = pathlib.Path(__file__).parent
BUILD_ERRORS = _PACKAGE / "_build_errors"


@functools.cache
def load(name: str = "_C") -> str | None:
    """Load scops_fast.<name>; None on success, else the reason it cannot be used."""
    spec = importlib.util.find_spec(f"scops_fast.{name}")
    if spec is None or spec.origin is None:
        record = BUILD_ERRORS / f"{name}.txt"
        if record.exists():
            return f"the build failed: {record.read_text().strip()[:500]}"
        return "not built: run `make install` (or `pip install -e .`) with a C++ compiler"
    try:
        torch.ops.load_library(spec.origin)
    except Exception as exc:
        return f"{spec.origin} does not load: {type(exc).__name__}: {exc}"
    return None
