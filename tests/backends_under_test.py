"""The (backend, device) pairs the shared suite (test_backends.py) runs, and the cases
each gets. A pair is listed only where this process can have it: "triton" on CPU through
Triton's interpreter always (in a child process when needed), "cuda_emu" (the CUDA
kernels' code on the CPU) always, the GPU pairs only where torch sees a GPU.

SCOPS_FAST_TEST_GPU_ONLY=1 (set by scripts/gpu_check.py) keeps only the GPU pairs, with
Triton's shapes cut to what its first compiles fit in the check's time box."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
LAYOUTS = ("contiguous", "transposed", "channels_last")

# (B, K, H, W): odd and non-square sizes with partial last blocks, K = 1, B = 1, one row,
# more than one tile along rows, and K = 64.
NATIVE_SHAPES = ((2, 3, 37, 53), (1, 1, 6, 5), (3, 4, 5, 5), (2, 2, 9, 4), (1, 8, 70, 66))
# Through the interpreter every program is Python: small images, tiny blocks.
INTERPRETER_SHAPES = ((2, 3, 9, 11), (1, 1, 6, 5), (2, 2, 9, 4), (2, 2, 1, 7))
MANY_PARTS = ((1, 64, 5, 7), (2, 40, 9, 11))
# The CUDA emulation runs 256 threads per block on the CPU: small images, but with several
# blocks along both grid axes (tiles of 256 pixels x images) and a partial last tile, and
# K at the kernels' limit (32 parts: 33 channels) and beyond it.
EMULATION_SHAPES = ((2, 3, 23, 29), (1, 1, 6, 5), (3, 2, 17, 16), (1, 32, 9, 7), (1, 40, 4, 5))

# Triton on a GPU compiles each kernel once per dtype and shape class, about a second each:
# one shape of each family (odd, several tiles, masked tails) and the K limit, for the GPU
# check's time box.
GPU_TRITON_SHAPES = ((2, 3, 37, 53), (1, 64, 5, 7))
#: Only the GPU pairs (scripts/gpu_check.py sets it).
GPU_ONLY = os.environ.get("SCOPS_FAST_TEST_GPU_ONLY", "0") not in ("", "0")
GPU_TARGET_IDS = ("cuda-cuda", "triton-cuda", "reference-cuda")

# Launch sizes for Triton in the suite: several programs along every grid axis and
# masked tails at the shapes above (tl.dot needs 16 on GPUs).
TRITON_TEST_BLOCKS = {
    "tile_pixels": 16,
    "span_pixels": 32,
    "warp_pixels": 16,
    "elementwise": 64,
    "dense_pixels": 16,
    "dense_channels": 16,
    "dense_programs": 3,
    "lowres_columns": 16,
}


@dataclass(frozen=True)
class Target:
    backend: str
    device: str
    shapes: tuple = NATIVE_SHAPES + MANY_PARTS
    #: every layout for these shapes, contiguous only for the rest
    all_layouts_for: int = len(NATIVE_SHAPES + MANY_PARTS)
    interpreted: bool = False
    run_all_shape: tuple = (3, 5, 33, 47)
    blocks: dict = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        """Kernels run by an emulator (Triton's interpreter, the CUDA emulation): slow."""
        return self.interpreted or self.backend == "cuda_emu"

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}"

    def cases(self):
        """(shape, dtype, layout) triples: float64 and float32 at every shape (every layout
        where listed), float16 and bfloat16 at the first shape. Emulated, the other layouts
        in float64 only: every launcher copies its inputs to contiguous ones before the
        kernel (the same copy in every dtype), so a float32 kernel sees what its contiguous
        case gives it, at seconds a case."""
        for i, shape in enumerate(self.shapes):
            layouts = LAYOUTS if i < self.all_layouts_for else ("contiguous",)
            for dtype in (F64, F32):
                for layout in layouts:
                    if self.emulated and dtype != F64 and layout != "contiguous":
                        continue
                    yield shape, dtype, layout
        for dtype in (F16, BF16):
            yield self.shapes[0], dtype, "contiguous"

    @contextlib.contextmanager
    def small_blocks(self):
        if not self.blocks:
            yield
            return
        from scops_fast.triton_kernels import BLOCKS

        saved = dict(BLOCKS)
        BLOCKS.update(self.blocks)
        try:
            yield
        finally:
            BLOCKS.clear()
            BLOCKS.update(saved)


def _targets() -> list[Target]:
    triton = dict(blocks=TRITON_TEST_BLOCKS, run_all_shape=(2, 4, 9, 7))
    gpu = [
        Target("cuda", "cuda"),
        Target("triton", "cuda", shapes=GPU_TRITON_SHAPES, all_layouts_for=1, **triton),
        Target("reference", "cuda", shapes=NATIVE_SHAPES[:3], all_layouts_for=1),
    ]
    if GPU_ONLY:
        return gpu
    out = [
        Target("cpp", "cpu"),
        Target(
            "triton",
            "cpu",
            shapes=INTERPRETER_SHAPES + MANY_PARTS[:1],
            all_layouts_for=1,
            interpreted=True,
            **triton,
        ),
    ]
    out.append(
        Target(
            "cuda_emu",
            "cpu",
            shapes=EMULATION_SHAPES,
            all_layouts_for=1,
            run_all_shape=(2, 4, 19, 17),
        )
    )
    if torch.cuda.is_available():
        out += gpu
    return out


TARGETS = _targets()
