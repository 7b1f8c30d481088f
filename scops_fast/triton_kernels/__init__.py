"""Triton kernels behind backend "triton", one module per op family; `scops_fast.ops`
declares them as torch custom ops `scops_fast_triton::*`.

Every launcher takes contiguous float32 / float64 tensors and computes in their dtype.
Reductions over pixels never use floating-point atomics: each program writes its
partial sums to its own slot and the slots are added in a fixed order, so results are
bitwise repeatable. The warp adjoints (scatters) add in int64 fixed point, which is
exact and therefore independent of the order in which atomics land (see `fixed.py`).

`BLOCKS` holds the launch sizes. The launchers read it at every call, so tests shrink
it to get many programs along every grid axis from small images.

Grids that put the batch on axis 1, which CUDA caps at 65535 programs, launch once per run
of at most BLOCKS["grid_y"] images (`batch_runs`), on views of the tensors: the kernels
index images from their views' start. An empty input (no image, pixel or channel) returns
without a launch.
"""

import contextlib

import torch
import triton

BLOCKS = {
    # [channels, pixels] tiles (moments, equivariance): pixels per tile, and pixels per
    # program of the reductions (a multiple of the tile), which sets the partial slots.
    # At 4 warps a 16 x 64 tile is 8 elements per thread: no spills in float32 (see aot.py).
    "tile_pixels": 64,
    "span_pixels": 1024,
    # warp: pixels per program, one per thread at 4 warps (the 25 unrolled radial terms
    # spill past that)
    "warp_pixels": 128,
    "warps": 4,
    # elementwise passes (fixed point back to float)
    "elementwise": 1024,
    # semantic dense: pixels per tile, feature channels per inner step, programs
    "dense_pixels": 64,
    "dense_channels": 32,
    "dense_programs": 256,
    # semantic low resolution: full-resolution columns per inner step
    "lowres_columns": 64,
    # CUDA's limit on grid axis 1 (and 2), where the batch goes (tests lower it)
    "grid_y": 65535,
}

# tl.dot needs every dimension >= 16 on NVIDIA GPUs; padded rows and columns are masked.
MIN_DOT = 16


def pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def batch_runs(batch: int) -> list[tuple[int, int]]:
    """[start, stop) runs of at most BLOCKS["grid_y"] images covering the batch: one run
    below CUDA's grid limit, none for an empty batch."""
    step = BLOCKS["grid_y"]
    return [(start, min(start + step, batch)) for start in range(0, batch, step)]


def tile_and_span() -> tuple[int, int]:
    """Tile width and per-program span of the pixel reductions, span a multiple of tile."""
    tile = BLOCKS["tile_pixels"]
    return tile, tile * max(1, BLOCKS["span_pixels"] // tile)


def kernel_mode() -> str:
    """ "interpreted" when this package's kernels and Triton's own @jit library (tl.sum,
    tl.max, ...) were decorated under TRITON_INTERPRET=1, "compiled" when neither was,
    "mixed" when the variable changed between `import triton` and the import of these
    kernels (then nothing runs: interpreted kernels cannot call compiled helpers)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    from scops_fast.triton_kernels import moments

    ours = isinstance(moments.moments_forward_kernel, InterpretedFunction)
    theirs = isinstance(tl.standard.sum, InterpretedFunction)
    if ours != theirs:
        return "mixed"
    return "interpreted" if ours else "compiled"


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
