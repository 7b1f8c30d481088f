"""Handing the C allocator's free memory back to the operating system.

On CPU, torch allocates tensors with malloc. glibc keeps freed blocks below its mmap
threshold (up to 32 MiB once it has adapted) in its heap, and a heap only shrinks
from its top, so after the forward of a training step hundreds of MB of freed
transients stay resident, scattered between live activations, and the backward
allocates its gradients on top of them. `malloc_trim(0)` releases every free page of
every arena (MADV_DONTNEED; the blocks stay in the free lists and are simply faulted
in again on reuse), which lowers the step's resident peak for a few milliseconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS, Windows, or a libc without it)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def heap_trim_available() -> bool:
    return _malloc_trim() is not None


def release_free_heap() -> bool:
    """Returns the allocator's free pages to the OS; True if any were released,
    False where nothing was (or the C library cannot do it)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
