"""Triton kernels (not written yet: see the GPU-path issue)."""

DEVICES = ("cuda",)
OPS: dict = {}


def probe():
    return "not implemented yet: the Triton kernels have not been written"
