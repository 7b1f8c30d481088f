"""Rare launch edges of the CUDA and Triton kernels, checked on the CPU: the CUDA code
through its emulation (backend "cuda_emu", csrc/cuda/emulate.h), the Triton kernels
through Triton's interpreter.

- Empty inputs (no image, no pixel, no channel): every launcher returns at once, without
  a grid of no blocks (a GPU refuses one, and the emulation throws as a GPU would), with
  the reference's results and gradients where the reference defines them.
- Batches beyond CUDA's gridDim.y limit of 65535: the launchers split the batch into runs
  of images. The emulation's limit (`emu_set_grid_yz_limit`) and Triton's
  `BLOCKS["grid_y"]` are lowered to 2, so that a batch of 5 crosses it in three runs.
- The emulation itself refuses every launch a GPU refuses.
- int64 index math in the Triton kernels, where a program id times a size passes 2^31.
"""

from triton_interpreter import (  # before anything imports triton
    INTERPRETER_HERE,
    SKIPPED_HERE,
    run_in_a_fresh_interpreter,
)

# isort: split
import contextlib

import pytest
import torch
import triton
import triton.language as tl
from backend_checks import poisoned_allocations, source_points
from backends_under_test import TRITON_TEST_BLOCKS
from conftest import rel_error

from scops_fast import _dispatch, reference
from scops_fast.ops import CUDA_EMU, TRITON
from scops_fast.triton_kernels.semantic import tile_range

F64 = torch.float64
RTOL64 = 1e-10  # test_backends.py's float64 tolerance
CPU_BACKENDS = ("cuda_emu", "triton", "cpp")


def usable(backend: str, device: str = "cpu") -> None:
    if backend == "triton" and device == "cpu":
        if not INTERPRETER_HERE:
            pytest.skip(SKIPPED_HERE)
        vars(_dispatch._loaded).pop("triton", None)  # a probe before the variable was set
    reason = _dispatch.unavailable_reason(backend, None, device)
    assert reason is None, f"{backend} should be usable on {device} here: {reason}"


@contextlib.contextmanager
def emu_grid_yz_limit(limit: int):
    emu = torch.ops.scops_fast_cuda_emu
    previous = emu.emu_set_grid_yz_limit(limit)
    try:
        yield
    finally:
        emu.emu_set_grid_yz_limit(previous)


@contextlib.contextmanager
def triton_blocks(**sizes):
    from scops_fast.triton_kernels import BLOCKS

    saved = dict(BLOCKS)
    BLOCKS.update(sizes)
    try:
        yield
    finally:
        BLOCKS.clear()
        BLOCKS.update(saved)


def all_ops(backend: str, shape, device: str = "cpu", seed: int = 0, skip=()):
    """Every public op of `backend` on float64 inputs drawn for logits of `shape`
    (B, K+1, H, W), called through the dispatcher's implementation (the public functions
    refuse an empty batch before any backend runs): {call: outputs, then gradients of a
    random weighting of them w.r.t. the inputs that take one}, but for the calls in
    `skip`."""
    gen = torch.Generator().manual_seed(seed)
    b, k1, h, w = shape

    def draw(*size, grad=False):
        return torch.randn(*size, generator=gen, dtype=F64).to(device).requires_grad_(grad)

    pred, pred_tps = draw(*shape, grad=True), draw(*shape, grad=True)
    probs = torch.softmax(draw(*shape), 1)[:, 1:].detach().requires_grad_(True)
    feats, low = draw(b, 5, h, w), [draw(b, 3, 3, 4), draw(b, 2, 2, 2)]
    sal = torch.rand(b, h, w, generator=gen, dtype=F64).to(device)
    basis = draw(k1 - 1, 5, grad=True)
    pts = source_points(b, F64, gen).to(device)
    calls = {
        "concentration": ("concentration_loss", (pred,), (pred,)),
        "centers": ("batch_get_centers", (probs,), (probs,)),
        "warp": ("tps_warp", (pred, pts), (pred,)),
        "warp-border": ("tps_warp", (pred, pts, "border"), (pred,)),
        "equivariance": ("equivariance_losses", (pred, pred_tps, pts), (pred, pred_tps)),
        "dense": ("semantic_consistency_loss", (feats, pred, basis), (pred, basis)),
        "lowres": ("semantic_consistency_loss_lowres", (low, pred, basis), (pred, basis)),
        "lowres-saliency": (
            "semantic_consistency_loss_lowres",
            (low, pred, basis, sal),
            (pred, basis),
        ),
    }
    results = {}
    for name, (op, args, leaves) in calls.items():
        if name in skip:
            continue
        out = _dispatch.select(op, backend, device, args)(*args)
        outs = out if isinstance(out, tuple) else (out,)
        weights = [torch.rand(o.shape, generator=gen, dtype=F64).to(device) + 0.5 for o in outs]
        total = sum((o * wt).sum() for o, wt in zip(outs, weights, strict=True))
        grads = torch.autograd.grad(total, leaves)
        results[name] = [t.detach().cpu() for t in (*outs, *grads)]
    return results


def assert_matches(got: dict, expected: dict, rtol: float):
    assert got.keys() == expected.keys()
    for name, tensors in expected.items():
        for i, (a, e) in enumerate(zip(got[name], tensors, strict=True)):
            what = f"{name}, tensor {i}"
            assert a.shape == e.shape and a.dtype == e.dtype, (what, a.shape, e.shape)
            assert torch.equal(a.isnan(), e.isnan()), f"{what}: NaN where the reference has none"
            if e.numel() and not e.isnan().all():
                err = rel_error(a.nan_to_num(), e.nan_to_num())
                assert err <= rtol, f"{what}: relative error {err:.3e}"


def assert_bitwise(a: dict, b: dict):
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            assert torch.equal(x.nan_to_num(), y.nan_to_num()), name


# --------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch_gives_the_references_results_and_gradients(backend):
    """B = 0 through every op: the reference's values (NaN means over no element, empty
    centres and warps) and gradients (empty for the inputs, exactly 0 for the basis, whose
    gradient is a sum over no pixel). The emulation throws at a launch of no blocks, so
    cuda_emu passing also proves that no CUDA launcher launched one; the uninitialised
    memory is NaN, so a result the launchers return unwritten shows."""
    usable(backend)
    with poisoned_allocations(), triton_blocks(**TRITON_TEST_BLOCKS):
        got = all_ops(backend, (0, 4, 5, 6))
        expected = all_ops("reference", (0, 4, 5, 6))
    assert_matches(got, expected, rtol=0.0)
    assert expected["dense"][2].eq(0).all() and expected["lowres"][2].eq(0).all()


def _primitive_cases(b, k1, h, w):
    """(primitive, arguments, expected outputs) at a (b, k1, h, w) input with no element:
    sums over no pixels are 0; tensors shaped as an input are as empty as it."""
    x = torch.randn(b, k1, h, w, dtype=F64)
    m = reference.tps_mapping(source_points(b, F64, torch.Generator().manual_seed(1)))
    k = k1 - 1
    g_moments = torch.rand(b, k, 3, dtype=F64)
    low = torch.randn(b, k, 3, 4, dtype=F64)
    gram = torch.randn(b, 5, 3, 4, dtype=F64)
    basis = torch.randn(k, 6, dtype=F64)
    zeros = torch.zeros

    def like_x():
        return torch.empty_like(x)

    return {
        "moments-logits": ("softmax_moments", (x, True), [zeros(b, k, 4, dtype=F64)]),
        "moments-probs": ("softmax_moments", (x, False), [zeros(b, k1, 4, dtype=F64)]),
        "moments-backward": (
            "softmax_moments_backward",
            (x, torch.rand(b, k1, 4, dtype=F64), False),
            [like_x()],
        ),
        "warp": ("tps_warp", (x, m, False), [like_x()]),
        "warp-backward": ("tps_warp_backward", (x, m, True), [like_x()]),
        "equivariance": (
            "equivariance",
            (x, x, m, False),
            [zeros(b, dtype=F64), zeros(b, k, 3, dtype=F64), zeros(b, k, 3, dtype=F64)],
        ),
        "equivariance-backward": (
            "equivariance_backward",
            (x, x, x, m, False, torch.rand(b, dtype=F64), g_moments, g_moments),
            [like_x(), like_x()],
        ),
        "dense": (
            "semantic_dense",
            (torch.randn(b, 6, h, w, dtype=F64), x, basis, True),
            [zeros((), dtype=F64), like_x(), zeros(k, 6, dtype=F64)],
        ),
        "lowres": (
            "semantic_lowres",
            (x, low, basis @ basis.t(), gram, torch.rand(b, h, w, dtype=F64), True),
            [zeros((), dtype=F64), like_x(), zeros(b, k, 3, 4, dtype=F64), zeros(k, k, dtype=F64)],
        ),
    }


EMPTY_SHAPES = {"no-image": (0, 4, 5, 6), "no-row": (2, 4, 0, 6), "no-column": (2, 4, 5, 0)}


@pytest.mark.parametrize("shape", EMPTY_SHAPES.values(), ids=EMPTY_SHAPES.keys())
@pytest.mark.parametrize("backend", ["cuda_emu", "triton"])
def test_kernel_primitives_take_inputs_without_pixels(backend, shape):
    """Each primitive of the CUDA and Triton kernels on inputs without images or without
    pixels returns at once: zero sums, outputs as empty as their inputs, no NaN from the
    poisoned allocations. H * W = 0 has no reference (its warp and upsampling refuse it):
    the expected values follow from the sums' definitions. The emulation throws at a grid
    of no blocks, so cuda_emu passing proves no CUDA launcher launches one."""
    usable(backend)
    ops = getattr(torch.ops, CUDA_EMU if backend == "cuda_emu" else TRITON)
    with poisoned_allocations(), triton_blocks(**TRITON_TEST_BLOCKS):
        for name, (op, args, expected) in _primitive_cases(*shape).items():
            out = getattr(ops, op)(*args)
            outs = list(out) if isinstance(out, tuple | list) else [out]
            if op == "equivariance":
                outs = outs[:3]  # warp(pred): shaped as pred in the CUDA op, empty in Triton's
            assert len(outs) == len(expected), name
            for i, (a, e) in enumerate(zip(outs, expected, strict=True)):
                assert a.shape == e.shape, (name, i, a.shape, e.shape)
                assert torch.equal(a, e), (name, i, a)


@pytest.mark.parametrize("backend", ["cuda_emu", "triton"])
def test_kernel_primitives_take_inputs_without_channels(backend):
    """Tensors with no channel (the warp of none, the centres of no part) and logits of the
    background alone (K = 0): what the CUDA moments backward used to divide by (a crash)
    and what left Triton's scatter with no element to launch over."""
    usable(backend)
    ops = getattr(torch.ops, CUDA_EMU if backend == "cuda_emu" else TRITON)
    m = reference.tps_mapping(source_points(2, F64, torch.Generator().manual_seed(1)))
    none = torch.randn(2, 0, 5, 6, dtype=F64)
    background = torch.randn(2, 1, 5, 6, dtype=F64)
    with poisoned_allocations(), triton_blocks(**TRITON_TEST_BLOCKS):
        assert ops.softmax_moments(none, False).shape == (2, 0, 4)
        grad = ops.softmax_moments_backward(none, torch.rand(2, 0, 4, dtype=F64), False)
        assert grad.shape == none.shape
        assert ops.tps_warp(none, m, False).shape == none.shape
        assert ops.tps_warp_backward(none, m, False).shape == none.shape
        assert ops.softmax_moments(background, True).shape == (2, 0, 4)


@pytest.mark.parametrize("backend", ["cuda_emu", "triton"])
def test_lowres_maps_without_pixels_are_refused(backend):
    """Every full-resolution pixel reads four low-resolution neighbours: maps of no pixel
    are refused, not read out of bounds (the reference's upsampling refuses them too)."""
    usable(backend)
    ops = getattr(torch.ops, CUDA_EMU if backend == "cuda_emu" else TRITON)
    x = torch.randn(2, 3, 5, 6, dtype=F64)
    no_rows, gram = torch.randn(2, 2, 0, 4, dtype=F64), torch.randn(2, 5, 0, 4, dtype=F64)
    with pytest.raises((RuntimeError, ValueError), match="low-resolution maps"):
        ops.semantic_lowres(x, no_rows, torch.eye(2, dtype=F64), gram, None, True)


# --------------------------------------------------------------------------- emulation


BAD_LAUNCHES = {
    "grid-x-0": (0, 1, 1, 32),
    "grid-y-0": (1, 0, 1, 32),
    "grid-z-0": (1, 1, 0, 32),
    "grid-x-2^31": (2**31, 1, 1, 32),
    "grid-y-65536": (1, 65536, 1, 32),
    "grid-z-65536": (1, 1, 65536, 32),
    "block-0": (1, 1, 1, 0),
    "block-1025": (1, 1, 1, 1025),
}


@pytest.mark.parametrize("geometry", BAD_LAUNCHES.values(), ids=BAD_LAUNCHES.keys())
def test_emulation_refuses_what_a_gpu_refuses(geometry):
    """cudaLaunchKernel refuses these (cudaErrorInvalidConfiguration): the emulation throws
    before any block runs (a grid of 2^31 blocks would run for hours)."""
    usable("cuda_emu")
    with pytest.raises(ValueError, match=r"cuda_emu: (grid|block) .* is not a valid CUDA"):
        torch.ops.scops_fast_cuda_emu.emu_launch(*geometry)


def test_emulation_runs_the_limits_and_a_lowered_y_limit():
    usable("cuda_emu")
    emu = torch.ops.scops_fast_cuda_emu
    assert emu.emu_launch(3, 2, 2, 32) == 3 * 2 * 2 * 32
    assert emu.emu_launch(1, 1, 1, 1024) == 1024
    assert emu.emu_launch(1, 3, 1, 1) == 3
    with emu_grid_yz_limit(2):
        assert emu.emu_launch(1, 2, 2, 1) == 4
        for geometry in ((1, 3, 1, 1), (1, 1, 3, 1)):
            with pytest.raises(ValueError, match="y and z at most 2"):
                emu.emu_launch(*geometry)
    assert emu.emu_launch(1, 3, 3, 1) == 9  # restored
    with pytest.raises(RuntimeError, match="from 1 to CUDA's 65535"):
        emu.emu_set_grid_yz_limit(65536)


# --------------------------------------------------------------------------- large batches


def test_cuda_batch_beyond_the_grid_y_limit():
    """A batch of 5 under a gridDim.y limit of 2 (the emulation would throw at a grid of 5
    images on y): every op matches the reference, and bitwise the run at CUDA's limit of
    65535 (one launch), so the runs of images cover the batch once, at the right offsets.
    Two tiles per image: the runs and the tiles index the partial sums together."""
    usable("cuda_emu")
    shape = (5, 4, 17, 16)
    with poisoned_allocations():
        expected = all_ops("reference", shape)
        whole = all_ops("cuda_emu", shape)
        with emu_grid_yz_limit(2):
            runs = all_ops("cuda_emu", shape)
    assert_matches(runs, expected, RTOL64)
    assert_bitwise(runs, whole)


def test_triton_batch_beyond_the_grid_y_limit(monkeypatch):
    """As the CUDA case, with Triton's BLOCKS["grid_y"] at 2: every launch whose grid puts
    the batch on axis 1 holds at most 2 images (recorded from the interpreter), each of them
    ran a last run of 1, and the results match the reference and, bitwise, one launch."""
    usable("triton")
    from triton.runtime.interpreter import InterpretedFunction

    launches = []
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        launches.append((self.__name__, tuple(grid)))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    shape = (5, 4, 6, 7)
    with poisoned_allocations(), triton_blocks(**TRITON_TEST_BLOCKS):
        expected = all_ops("reference", shape)
        whole = all_ops("triton", shape)
        launches.clear()
        with triton_blocks(grid_y=2):
            runs = all_ops("triton", shape)
    batched = {name for name, grid in launches if len(grid) > 1}
    assert batched == {
        "moments_forward_kernel",
        "moments_backward_kernel",
        "warp_forward_kernel",
        "warp_backward_kernel",
        "equivariance_forward_kernel",
        "equivariance_backward_kernel",
        "semantic_lowres_kernel",
        "lowres_rows_kernel",
    }
    assert max(grid[1] for _, grid in launches if len(grid) > 1) == 2
    assert {name for name, grid in launches if len(grid) > 1 and grid[1] == 1} == batched
    assert_matches(runs, expected, RTOL64)
    assert_bitwise(runs, whole)


# --------------------------------------------------------------------------- int64 indices


@triton.jit
def _tile_ranges(out_ptr, n_tiles):
    """Each program's tile range, and the uncast product as a control."""
    first, stop = tile_range(n_tiles)
    prog = tl.program_id(0)
    tl.store(out_ptr + 3 * prog, first)
    tl.store(out_ptr + 3 * prog + 1, stop)
    tl.store(out_ptr + 3 * prog + 2, (prog * n_tiles // tl.num_programs(0)).to(tl.int64))


def test_triton_dense_tile_range_is_exact_past_int32():
    """The dense semantic kernel's split of the batch's tiles between its programs
    (`semantic.tile_range`, which the kernel calls) at 256 programs and n_tiles = 16M, the
    tiles of a batch of 1000 images of 1024 x 1024 (64-pixel tiles): program id x n_tiles
    reaches 4.1e9, past int32. Under the interpreter, int32 arithmetic wraps as on a GPU
    (numpy int32; the control below shows the uncast product wrapping), so this proves the
    int64 cast comes before the multiplication and every program gets its exact range.
    It cannot prove what the GPU compiler emits (aot.py only proves that the kernel lowers
    for sm_90), nor run such a batch: its logits alone take 38 GB."""
    usable("triton")
    n_prog, n_tiles = 256, 1000 * (1024 * 1024 // 64)
    assert n_tiles < 2**31 < (n_prog - 1) * n_tiles  # an int32 argument, an int64 product
    out = torch.zeros(n_prog, 3, dtype=torch.int64)
    _tile_ranges[(n_prog,)](out, n_tiles)
    exact = torch.tensor(
        [[p * n_tiles // n_prog, (p + 1) * n_tiles // n_prog] for p in range(n_prog)]
    )
    assert torch.equal(out[:, :2], exact)
    assert out[0, 0] == 0 and out[-1, 1] == n_tiles
    assert torch.equal(out[1:, 0], out[:-1, 1])  # every tile once
    assert not torch.equal(out[:, 2], exact[:, 0]), "the interpreter no longer wraps int32"


# --------------------------------------------------------------------------- elsewhere


@pytest.mark.skipif(INTERPRETER_HERE, reason="the triton cases run in this process")
def test_triton_cases_in_a_fresh_interpreter(request):
    selection = "triton and not fresh_interpreter"
    run_in_a_fresh_interpreter(__file__, selection, request.config.option.markexpr, 900)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_on_a_gpu_empty_batch_and_beyond_the_grid_y_limit():
    """The real launches: B = 0 (a grid of no blocks would fail the launch check) and a
    batch of 65536 one-tile images, one more than gridDim.y holds, in two launches (the
    dense loss, a loop over images of cuBLAS calls with no grid of its own, left out)."""
    usable("cuda", "cuda")
    empty = (0, 4, 5, 6)
    assert_matches(all_ops("cuda", empty, "cuda"), all_ops("reference", empty, "cuda"), 0.0)
    shape, skip = (65536, 3, 2, 3), ("dense",)
    assert_matches(
        all_ops("cuda", shape, "cuda", skip=skip),
        all_ops("reference", shape, "cuda", skip=skip),
        RTOL64,
    )
