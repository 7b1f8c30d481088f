"""CUDA kernels from csrc/ (not written yet: see the GPU-path issue)."""

DEVICES = ("cuda",)
OPS: dict = {}


def probe():
    return "not implemented yet: the CUDA kernels have not been written"
