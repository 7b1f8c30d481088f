"""Lazy loading of the compiled kernels (csrc/), recording why they are unavailable.

The library registers its ops with `TORCH_LIBRARY(scops_fast, ...)`, so it is loaded
with `torch.ops.load_library` rather than imported as a Python module.

`SCOPS_FAST_EXT_PATH=/path/to/lib.so` loads that file instead of the built `scops_fast._C`
(e.g. the sanitizer build of `scripts/sanitize.py`); the package's own `_C` is then not
loaded, since both register the same `scops_fast::` ops.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib

import torch

_PACKAGE = pathlib.Path(__file__).parent
BUILD_ERRORS = _PACKAGE / "_build_errors"
#: Environment variable naming a library to load in place of scops_fast._C.
PATH_VAR = "SCOPS_FAST_EXT_PATH"


@functools.cache
def load(name: str = "_C") -> str | None:
    """Load scops_fast.<name>; None on success, else the reason it cannot be used."""
    override = os.environ.get(PATH_VAR) if name == "_C" else None
    if override:
        if not os.path.isfile(override):
            return f"{PATH_VAR}={override!r} is not a file"
        try:
            torch.ops.load_library(override)
        except Exception as exc:
            return f"{PATH_VAR}={override!r} does not load: {type(exc).__name__}: {exc}"
        return None
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
