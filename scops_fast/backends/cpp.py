"""Fused C++ CPU kernels from csrc/, registered as torch custom ops `scops_fast::*`: no
limit on the number of parts, any float dtype (half precision accumulates in float32)."""

from scops_fast import _ext
from scops_fast.backends import fused_table
from scops_fast.ops import NATIVE, compose


def devices():
    return ("cpu",)


# The fused concentration op exists in the CPU library only.
OPS = fused_table(compose.losses_from(NATIVE, concentration_devices=("cpu",)))


def describe() -> str | None:
    """Which instruction-set build of the kernels runs."""
    return _ext.cpu_path()


def probe():
    return _ext.load()
