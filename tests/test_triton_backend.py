"""Backend "triton" against the reference, on CPU tensors through Triton's interpreter:
values, gradients, odd sizes with masked tails, many programs along every grid axis (tiny
blocks), dtypes, layouts, determinism, poisoned outputs and torch.compile.

TRITON_INTERPRET=1 must be set before Triton decorates any @triton.jit function, its own
standard library (tl.sum, tl.max, ...) included: so before `triton.language` is first
imported, not merely before our kernels are. It is set below, before anything from
scops_fast is imported; pytest imports every test module before running any test, so
the whole pytest process sees it from then on (unless, as next paragraph, the tests run
in a child process, which alone gets the variable). That changes nothing for the other
modules: "auto" never picks triton for CPU tensors and no other code of ours reads it.

In a full run an earlier module (test_models, through torchvision) has usually imported
triton already, without the variable; the interpreter then cannot run our kernels in
this process. The tests here are then skipped and `test_in_a_fresh_interpreter` runs
this file in a child pytest with the variable set from the start.
"""

import os
import sys


def _triton_imported_without_interpreter() -> bool:
    lang = sys.modules.get("triton.language")
    if lang is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(lang.standard.sum, InterpretedFunction)


IN_PROCESS = not _triton_imported_without_interpreter()
if IN_PROCESS:
    os.environ["TRITON_INTERPRET"] = "1"

import pathlib  # noqa: E402
import subprocess  # noqa: E402

import backend_checks  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from backend_checks import TOL, WARP_TOL, poisoned_allocations, source_points  # noqa: E402
from conftest import assert_rel  # noqa: E402

import scops_fast  # noqa: E402
from scops_fast import _dispatch, losses, reference, tps  # noqa: E402

# Tiny launch sizes: several programs along every grid axis and masked tails at these shapes.
TEST_BLOCKS = {
    "tile_pixels": 16,
    "span_pixels": 32,
    "warp_pixels": 16,
    "elementwise": 64,
    "dense_pixels": 16,
    "dense_channels": 16,
    "dense_programs": 3,
    "lowres_columns": 16,
}

# (B, K, H, W): odd and non-square with a partial last block, K=1 and B=1, one row.
SHAPES = [(2, 3, 9, 11), (1, 1, 6, 5), (2, 2, 9, 4), (2, 2, 1, 7)]
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True)
def interpreted_backend(request):
    if not IN_PROCESS:
        if request.node.name != "test_in_a_fresh_interpreter":
            pytest.skip(
                "triton was imported without TRITON_INTERPRET=1 before this module: "
                "test_in_a_fresh_interpreter runs these tests in a child process"
            )
        yield
        return
    # A probe that ran before the variable was set has cached "no CUDA device".
    _dispatch._loaded.pop("triton", None)
    yield
    _dispatch._loaded.pop("triton", None)


@pytest.mark.skipif(IN_PROCESS, reason="the tests of this file run in this process")
def test_in_a_fresh_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.strip().splitlines()[-1], done.stdout[-2000:]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    from scops_fast.triton_kernels import BLOCKS

    for key, value in TEST_BLOCKS.items():
        monkeypatch.setitem(BLOCKS, key, value)


@pytest.fixture(autouse=True)
def poison_empty_tensors():
    with poisoned_allocations():
        yield


def test_backend_is_usable_on_cpu_only_through_the_interpreter():
    report = scops_fast.available_backends()
    assert "triton" in report, report.unavailable.get("triton")
    assert report["triton"] == ("cuda", "cpu")
    # "auto" keeps its CPU order: triton is never picked for CPU tensors.
    auto = _dispatch.resolve("concentration_loss", "auto", "cpu")
    assert auto is not _dispatch._load("triton").module.OPS["concentration_loss"]


def test_probe_reasons(monkeypatch):
    from scops_fast import triton_kernels
    from scops_fast.backends import triton as backend

    monkeypatch.setattr(backend, "DEVICES", backend.DEVICES)
    monkeypatch.setattr(triton_kernels, "kernel_mode", lambda: "mixed")
    assert "set it before `import triton`" in backend.probe()
    monkeypatch.setattr(triton_kernels, "kernel_mode", lambda: "compiled")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "imported without TRITON_INTERPRET=1" in backend.probe()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "no CUDA device" in backend.probe()
    monkeypatch.setitem(sys.modules, "triton", None)
    assert "triton is not importable" in backend.probe()


def make(shape, dtype, gen, scale=1.0, layout="contiguous"):
    return backend_checks.make(shape, layout, dtype, gen, scale)


def check(fn, inputs, dtype, tol):
    backend_checks.check("triton", fn, inputs, dtype, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_concentration_and_centers(shape, dtype, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), dtype, gen, scale=3.0)
    check(losses.concentration_loss, [pred], dtype, TOL)
    probs = torch.softmax(pred.detach(), 1)[:, 1:].requires_grad_(True)
    check(losses.batch_get_centers, [probs], dtype, TOL)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_warp_and_equivariance(shape, dtype, padding, gen):
    b, k, h, w = shape
    pts = source_points(b, dtype, gen)
    x = make((b, 3, h, w), dtype, gen)
    check(
        lambda x, backend: tps.tps_warp(x, pts, padding_mode=padding, backend=backend),
        [x],
        dtype,
        WARP_TOL,
    )
    pred = make((b, k + 1, h, w), dtype, gen, scale=2.0)
    pred_tps = make((b, k + 1, h, w), dtype, gen, scale=2.0)
    check(
        lambda p, q, backend: losses.equivariance_losses(
            p, q, pts, padding_mode=padding, backend=backend
        ),
        [pred, pred_tps],
        dtype,
        WARP_TOL,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_semantic_dense(shape, dtype, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), dtype, gen, scale=2.0)
    # 20 channels: two channel chunks of 16, the second masked.
    feats = make((b, 20, h, w), dtype, gen).detach()
    basis = torch.rand(k, 20, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    check(
        lambda p, m, backend: losses.semantic_consistency_loss(feats, p, m, backend=backend),
        [pred, basis],
        dtype,
        TOL,
    )


@pytest.mark.parametrize("saliency", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_semantic_lowres(shape, dtype, saliency, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), dtype, gen, scale=2.0)
    low, sal, basis = backend_checks.lowres_case(b, k, h, w, dtype, gen, saliency)
    check(
        lambda p, m, backend: losses.semantic_consistency_loss_lowres(
            low, p, m, sal, backend=backend
        ),
        [pred, basis],
        dtype,
        TOL,
    )


def test_lowres_one_pixel_feature_map_and_one_row_output(gen):
    # Degenerate upsampling axes: h = w = 1 (every pixel reads one vector) and H = 1.
    pred = make((2, 3, 1, 9), torch.float64, gen, scale=2.0)
    low = torch.randn(2, 4, 1, 1, generator=gen, dtype=torch.float64)
    basis = torch.rand(2, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    check(
        lambda p, m, backend: losses.semantic_consistency_loss_lowres(low, p, m, backend=backend),
        [pred, basis],
        torch.float64,
        TOL,
    )


def test_non_contiguous_layouts(gen):
    b, k, h, w = 2, 2, 9, 7
    pts = source_points(b, torch.float32, gen)
    pred = make((b, k + 1, h, w), torch.float32, gen, 2.0, layout="channels_last")
    pred_tps = make((b, k + 1, w, h), torch.float32, gen, 2.0).transpose(2, 3)
    check(losses.concentration_loss, [pred], torch.float32, TOL)
    check(lambda x, backend: tps.tps_warp(x, pts, backend=backend), [pred], torch.float32, WARP_TOL)
    check(
        lambda p, q, backend: losses.equivariance_losses(p, q, pts, backend=backend),
        [pred, pred_tps],
        torch.float32,
        WARP_TOL,
    )
    feats = torch.randn(b, 5, w, h, generator=gen).transpose(2, 3)
    basis = torch.rand(k, 5, generator=gen, requires_grad=True)
    check(
        lambda p, m, backend: losses.semantic_consistency_loss(feats, p, m, backend=backend),
        [pred_tps, basis],
        torch.float32,
        TOL,
    )


def test_lowres_matches_dense_at_a_training_like_shape(gen):
    # SPEC section 8's features, scaled down: 4x4 -> 32x32, saliency-masked.
    pred = torch.randn(1, 9, 32, 32, generator=gen) * 2
    low = torch.randn(1, 24, 4, 4, generator=gen)
    sal = torch.rand(1, 32, 32, generator=gen)
    basis = torch.rand(8, 24, generator=gen)
    dense_v = reference.upsample_features(low, 32, 32, sal)
    expected = losses.semantic_consistency_loss(dense_v, pred, basis, backend="reference")
    got = losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend="triton")
    assert_rel(got, expected, 1e-5, "lowres vs dense")
    got_dense = losses.semantic_consistency_loss(dense_v, pred, basis, backend="triton")
    assert_rel(got_dense, expected, 1e-5, "dense")


def test_gradcheck_float64(gen):
    cases = backend_checks.gradcheck_cases("triton", gen)
    for fn, inputs in cases:
        # Fast mode: a few random directional derivatives instead of the full Jacobian,
        # which would take minutes through the interpreter.
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def run_all():
    return backend_checks.run_all_ops("triton", (2, 4, 9, 7), 18, (3, 4))


def test_deterministic_across_runs():
    backend_checks.assert_bitwise_equal(run_all(), run_all())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fixed_point_adjoint_edge_cases(gen):
    from scops_fast.triton_ops.warp import tps_warp_backward

    pts = source_points(1, torch.float64, gen)
    mapping = reference.tps_mapping(pts)
    zeros = torch.zeros(1, 2, 6, 5)
    assert torch.equal(tps_warp_backward(zeros, mapping, False), zeros)
    # A non-finite upstream gradient must not come back as finite numbers.
    g = torch.randn(1, 2, 6, 5, generator=gen)
    g[0, 1, 2, 3] = float("nan")
    assert torch.isnan(tps_warp_backward(g, mapping, False)).any()
    pred = torch.randn(1, 3, 6, 5, generator=gen)
    pred[0, 1, 2, 3] = float("inf")
    pred.requires_grad_(True)
    lm = losses.equivariance_losses(pred, pred.detach().flip(3), pts, backend="triton")[1]
    (grad,) = torch.autograd.grad(lm, pred)
    assert torch.isnan(grad).any()
    # Tiny gradients keep their relative precision: the scale follows their size.
    g = torch.randn(1, 2, 6, 5, generator=gen, dtype=torch.float64) * 1e-200
    x = torch.zeros(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(reference.tps_warp(x, pts), x, g)
    assert_rel(tps_warp_backward(g, mapping, False), expected, 1e-10, "tiny gradients")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype, gen):
    pred = torch.randn(2, 5, 8, 6, generator=gen) * 2
    pts = source_points(2, torch.float32, gen)
    feats = torch.randn(2, 6, 8, 6, generator=gen)
    basis = torch.rand(4, 6, generator=gen)
    cases = [
        lambda p, b: losses.concentration_loss(p, backend=b),
        lambda p, b: losses.equivariance_losses(p, p.flip(3), pts, backend=b)[0],
        lambda p, b: losses.semantic_consistency_loss(
            feats.to(p.dtype), p, basis.to(p.dtype), backend=b
        ),
        lambda p, b: losses.semantic_consistency_loss_lowres(
            feats[..., :4, :3].to(p.dtype), p, basis.to(p.dtype), backend=b
        ),
    ]
    for fn in cases:
        half = fn(pred.to(dtype), "triton")
        assert half.dtype == dtype
        assert_rel(half.float(), fn(pred.to(dtype).float(), "triton"), 1e-2, str(dtype))
    assert tps.tps_warp(pred.to(dtype), pts, backend="triton").dtype == dtype


def test_compile_fullgraph_has_no_graph_breaks(gen):
    pred = torch.randn(2, 3, 7, 6, generator=gen, requires_grad=True)
    pred_tps = torch.randn(2, 3, 7, 6, generator=gen, requires_grad=True)
    low = torch.randn(2, 6, 3, 3, generator=gen)
    feats = torch.randn(2, 6, 7, 6, generator=gen)
    basis = torch.rand(2, 6, generator=gen, requires_grad=True)
    sal = torch.rand(2, 7, 6, generator=gen)
    pts = source_points(2, torch.float32, gen)
    be = "triton"

    def total(pred, pred_tps, basis):
        eqv, lm = losses.equivariance_losses(pred, pred_tps, pts, backend=be)
        return (
            losses.concentration_loss(pred, backend=be)
            + eqv
            + lm
            + losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend=be)
            + losses.semantic_consistency_loss(feats, pred, basis, backend=be)
            + losses.batch_get_centers(torch.softmax(pred, 1)[:, 1:], backend=be).sum()
            + tps.tps_warp(pred, pts, backend=be).mean()
        )

    torch._dynamo.reset()
    compiled = torch.compile(total, backend="aot_eager", fullgraph=True)
    expected = total(pred, pred_tps, basis)
    got = compiled(pred, pred_tps, basis)
    assert_rel(got, expected, 1e-6, "compiled value")
    ge = torch.autograd.grad(expected, (pred, pred_tps, basis))
    gc = torch.autograd.grad(got, (pred, pred_tps, basis))
    for a, e in zip(gc, ge, strict=True):
        assert_rel(a, e, 1e-6, "compiled gradient")
