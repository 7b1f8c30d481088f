"""Backend "cpp" against the reference: values, gradients, layouts, dtypes,
determinism, poisoned outputs and torch.compile."""

import backend_checks
import pytest
import torch
from backend_checks import (
    TOL,
    WARP_TOL,
    assert_bitwise_equal,
    make,
    poisoned_allocations,
    source_points,
)
from conftest import assert_rel

import scops_fast
from scops_fast import _ext, losses, reference, tps

# (B, K, H, W): odd, non-square, K=1, B=1, more than one tile along rows.
SHAPES = [(2, 3, 37, 53), (1, 1, 6, 5), (3, 4, 5, 5), (2, 2, 9, 4), (1, 8, 70, 66)]
DTYPES = [torch.float64, torch.float32]
LAYOUTS = ["contiguous", "transposed", "channels_last"]


def test_cpp_backend_is_built():
    report = scops_fast.available_backends()
    assert "cpp" in report, report.unavailable.get("cpp")


@pytest.fixture(autouse=True)
def poison_empty_tensors():
    with poisoned_allocations():
        yield


def check(fn, inputs, dtype, tol, n_grad=None):
    backend_checks.check("cpp", fn, inputs, dtype, tol, n_grad)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_concentration_and_centers(shape, dtype, layout, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), layout, dtype, gen, scale=3.0)
    check(losses.concentration_loss, [pred], dtype, TOL)
    probs = torch.softmax(pred.detach(), 1)[:, 1:].requires_grad_(True)
    check(losses.batch_get_centers, [probs], dtype, TOL)


def test_huge_page_outputs_match_reference_and_behave_as_tensors(gen):
    # Outputs of 32 MiB and more come from the huge-page block cache in
    # csrc/bindings.cpp, not ATen's allocator: the same values, fully overwritten (the
    # poisoning fixture NaN-fills them too, fresh or reused), and ordinary tensors after.
    b, k, h, w = 16, 8, 256, 256
    pred = make((b, k + 1, h, w), "contiguous", torch.float32, gen, scale=3.0)
    assert pred.nbytes >= 32 << 20
    check(losses.concentration_loss, [pred], torch.float32, TOL)
    x = pred.detach().clone().requires_grad_(True)
    expected = torch.autograd.grad(losses.concentration_loss(x, backend="reference"), x)[0]
    for _ in range(3):  # the later calls reuse the blocks the earlier ones freed
        got = torch.autograd.grad(losses.concentration_loss(x, backend="cpp"), x)[0]
        assert_rel(got, expected, TOL[torch.float32])
    losses.concentration_loss(x, backend="cpp").backward()
    first = x.grad.clone()
    losses.concentration_loss(x, backend="cpp").backward()  # accumulates into x.grad
    assert_rel(x.grad, 2 * first, 1e-6)
    x.grad.resize_(0)
    x.grad = None


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_warp_and_equivariance(shape, dtype, layout, padding, gen):
    b, k, h, w = shape
    pts = source_points(b, dtype, gen)
    x = make((b, 3, h, w), layout, dtype, gen)
    check(
        lambda x, backend: tps.tps_warp(x, pts, padding_mode=padding, backend=backend),
        [x],
        dtype,
        WARP_TOL,
    )
    pred = make((b, k + 1, h, w), layout, dtype, gen, scale=2.0)
    pred_tps = make((b, k + 1, h, w), layout, dtype, gen, scale=2.0)
    check(
        lambda p, q, backend: losses.equivariance_losses(
            p, q, pts, padding_mode=padding, backend=backend
        ),
        [pred, pred_tps],
        dtype,
        WARP_TOL,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_semantic_dense(shape, dtype, layout, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), layout, dtype, gen, scale=2.0)
    feats = make((b, 7, h, w), layout, dtype, gen).detach()
    basis = torch.rand(k, 7, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    check(
        lambda p, m, backend: losses.semantic_consistency_loss(feats, p, m, backend=backend),
        [pred, basis],
        dtype,
        TOL,
    )


@pytest.mark.parametrize("saliency", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_semantic_lowres(shape, dtype, saliency, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), "contiguous", dtype, gen, scale=2.0)
    low, sal, basis = backend_checks.lowres_case(b, k, h, w, dtype, gen, saliency)
    check(
        lambda p, m, backend: losses.semantic_consistency_loss_lowres(
            low, p, m, sal, backend=backend
        ),
        [pred, basis],
        dtype,
        TOL,
    )


def test_lowres_matches_dense_at_training_shape(gen):
    # SPEC section 8's features: 16x16 -> the image size, saliency-masked.
    pred = torch.randn(2, 9, 64, 64, generator=gen) * 2
    low = torch.randn(2, 32, 4, 4, generator=gen)
    sal = torch.rand(2, 64, 64, generator=gen)
    basis = torch.rand(8, 32, generator=gen)
    dense_v = reference.upsample_features(low, 64, 64, sal)
    expected = losses.semantic_consistency_loss(dense_v, pred, basis, backend="reference")
    got = losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend="cpp")
    assert_rel(got, expected, 1e-5, "lowres vs dense")


def test_gradcheck_float64(gen):
    for fn, inputs in backend_checks.gradcheck_cases("cpp", gen):
        assert torch.autograd.gradcheck(fn, inputs)


def run_all():
    return backend_checks.run_all_ops("cpp", (3, 5, 33, 47), 6, (4, 5))


def test_deterministic_across_runs_and_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = run_all(), run_all()
        torch.set_num_threads(1)
        single = run_all()
    finally:
        torch.set_num_threads(threads)
    assert_bitwise_equal(first, second)
    assert_bitwise_equal(first, single)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype, gen):
    pred = torch.randn(2, 5, 16, 12, generator=gen) * 2
    pts = source_points(2, torch.float32, gen)
    feats = torch.randn(2, 6, 16, 12, generator=gen)
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
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    for fn in cases:
        half = fn(pred.to(dtype), "cpp")
        assert half.dtype == dtype
        assert_rel(half.float(), fn(pred.to(dtype).float(), "cpp"), tol, str(dtype))
    assert tps.tps_warp(pred.to(dtype), pts, backend="cpp").dtype == dtype


def test_compile_fullgraph_has_no_graph_breaks(gen):
    pred = torch.randn(2, 4, 12, 10, generator=gen, requires_grad=True)
    pred_tps = torch.randn(2, 4, 12, 10, generator=gen, requires_grad=True)
    low = torch.randn(2, 6, 3, 3, generator=gen)
    basis = torch.rand(3, 6, generator=gen, requires_grad=True)
    sal = torch.rand(2, 12, 10, generator=gen)
    pts = source_points(2, torch.float32, gen)

    def total(pred, pred_tps, basis):
        eqv, lm = losses.equivariance_losses(pred, pred_tps, pts, backend="cpp")
        return (
            losses.concentration_loss(pred, backend="cpp")
            + eqv
            + lm
            + losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend="cpp")
            + losses.batch_get_centers(torch.softmax(pred, 1)[:, 1:], backend="cpp").sum()
            + tps.tps_warp(pred, pts, backend="cpp").mean()
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


def test_missing_build_is_reported_not_raised(tmp_path, monkeypatch):
    assert "not built" in _ext.load.__wrapped__("_no_such_library")
    monkeypatch.setattr(_ext, "BUILD_ERRORS", tmp_path)
    (tmp_path / "_no_such_library.txt").write_text("CompileError: g++ said no\n")
    assert "g++ said no" in _ext.load.__wrapped__("_no_such_library")
