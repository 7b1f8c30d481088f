"""Every op x every backend x every device this process has, against the reference: values
and gradients (float64, float32, float16, bfloat16), odd shapes with partial blocks, K up to
64, non-contiguous layouts, NaN-poisoned outputs, gradcheck, determinism and
torch.compile. One suite; a backend or device joins it by a line in `backends_under_test`.

Tolerances. float64: relative error 1e-10 against the reference. Lower precision, after
flash-attention's rule: a kernel's error against the float64 reference is at most twice
the reference's own error in that dtype, plus a small atol (`ATOL`). The kernels
accumulate in float32/float64, so they usually beat the reference.

Triton on CPU runs through its interpreter (tests/triton_interpreter.py): where an earlier
module imported triton without it, the "triton-cpu" cases skip here and
`test_triton_cpu_in_a_fresh_interpreter` runs them in a child pytest. Where torch sees a GPU
the "triton-cuda" cases test the compiled kernels and the child runs the CPU cases.
"""

from triton_interpreter import (  # before anything imports triton
    INTERPRETER_HERE,
    SKIPPED_HERE,
    run_in_a_fresh_interpreter,
)

# isort: split
import functools
import re

import pytest
import torch
from backend_checks import (
    assert_bitwise_equal,
    loss_calls,
    lowres_case,
    make,
    poisoned_allocations,
    run_all_ops,
    source_points,
)
from backends_under_test import GPU_ONLY, TARGETS, Target
from conftest import rel_error

import scops_fast
from scops_fast import _dispatch, losses, reference, tps
from scops_fast.ops import NATIVE, TRITON

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
RTOL64 = 1e-10
# Added to twice the reference's own error; the warp's larger one covers bilinear weights
# rounded to the dtype at positions the spline puts a rounding away from a pixel edge.
ATOL = {F32: 1e-5, F16: 2e-3, BF16: 1.6e-2}
WARP_ATOL = {F32: 1e-4, F16: 4e-3, BF16: 3e-2}


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "target" not in names:
        return
    if {"shape", "dtype", "layout"} <= set(names):
        cases = [(t, *case) for t in TARGETS for case in t.cases()]
        ids = [
            f"{t.id}-{'x'.join(map(str, s))}-{str(d).removeprefix('torch.')}-{lay}"
            for t, s, d, lay in cases
        ]
        metafunc.parametrize("target,shape,dtype,layout", cases, ids=ids)
    else:
        metafunc.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])


@pytest.fixture(autouse=True)
def usable(request):
    # getfixturevalue, not funcargs: this autouse fixture may be set up before the
    # parameter is filled in (seen when another module imported triton first).
    target = request.getfixturevalue("target") if "target" in request.fixturenames else None
    if target is None:
        yield
        return
    if target.interpreted and not INTERPRETER_HERE:
        pytest.skip(SKIPPED_HERE)
    if target.interpreted:
        # A probe before the variable was set cached "no CUDA device".
        vars(_dispatch._loaded).pop("triton", None)
    reason = _dispatch.unavailable_reason(target.backend, None, target.device)
    if reason is not None and "ATEN_CPU_CAPABILITY=" in reason:
        pytest.skip(reason)  # torch's portable kernels asked for (`make test-rounding`, run A)
    assert reason is None, f"{target.id} should be usable here: {reason}"
    with target.small_blocks(), poisoned_allocations(target.device):
        yield


# Marked `rounding` so that `make test-rounding` runs it too: a worker that imported triton
# without the interpreter skips this file's triton-cpu cases, rounding ones included, and
# which worker that is depends on the order xdist hands out files. The child takes the
# parent's -m, so under -m rounding it runs the rounding cases only.
@pytest.mark.rounding
@pytest.mark.skipif(INTERPRETER_HERE, reason="the triton-cpu cases run in this process")
@pytest.mark.skipif(GPU_ONLY, reason="SCOPS_FAST_TEST_GPU_ONLY=1: the GPU pairs only")
def test_triton_cpu_in_a_fresh_interpreter(request):
    run_in_a_fresh_interpreter(__file__, "triton-cpu", request.config.option.markexpr, 1200)


def check(target: Target, fn, inputs, dtype, atol=ATOL, n_grad=None):
    """fn(*inputs, backend=...) on the target against the reference: every output and the
    gradients w.r.t. the first n_grad inputs under a random upstream weight. `inputs` are
    float64 CPU leaves; each side gets its own copy in `dtype` on its device."""
    n_grad = len(inputs) if n_grad is None else n_grad
    gen = torch.Generator().manual_seed(99)

    def run(backend, dt, device):
        xs = [x.detach().to(device=device, dtype=dt) for x in inputs]
        leaves = xs[:n_grad]
        for x in leaves:
            x.requires_grad_(True)
        out = fn(*xs, backend=backend)
        out = (out,) if torch.is_tensor(out) else tuple(out)
        for o in out:
            assert o.dtype == dt and o.device.type == device
        weights = [torch.rand(o.shape, generator=gen, dtype=F64) + 0.5 for o in out]
        total = sum((o * w.to(o)).sum() for o, w in zip(out, weights, strict=True))
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        return [t.detach().cpu().double() for t in (*out, *grads) if t is not None]

    gen.manual_seed(99)
    exact = run("reference", F64, "cpu")
    gen.manual_seed(99)
    got = run(target.backend, dtype, target.device)
    assert len(got) == len(exact)
    if dtype == F64:
        for i, (a, e) in enumerate(zip(got, exact, strict=True)):
            assert rel_error(a, e) <= RTOL64, f"output {i}: {rel_error(a, e):.3e}"
        return
    gen.manual_seed(99)
    ref_low = run("reference", dtype, target.device)
    for i, (a, r, e) in enumerate(zip(got, ref_low, exact, strict=True)):
        err, ref_err = rel_error(a, e), rel_error(r, e)
        bound = 2 * ref_err + atol[dtype]
        assert err <= bound, f"output {i}: error {err:.3e} > 2 x {ref_err:.3e} + {atol[dtype]}"


def refused(target: Target, op: str, channels: int) -> bool:
    """When the target's predicate refuses `channels`, the explicit call must raise
    before running, and "auto" must pass over it to a backend that takes them."""
    module = _dispatch._load(target.backend).module
    probe = torch.empty(1, channels, 1, 1, device="meta")
    args = {
        "semantic_consistency_loss_lowres": ([probe], probe, None, None),
        "semantic_consistency_loss": (probe, probe, None),
    }.get(op, (probe, probe, None, "zeros"))
    reason = module.OPS[op].supports(*args)
    if reason is None:
        return False
    with pytest.raises(scops_fast.BackendUnavailableError, match=re.escape(reason)):
        _dispatch.choose(op, target.backend, target.device, args)
    assert _dispatch.explain(op, target.device, args)["backend"] != target.backend
    return True


def pts_for(b, gen):
    return source_points(b, F64, gen)


def test_target_is_reported_usable(target):
    report = scops_fast.available_backends()
    assert target.device in report[target.backend], str(report)
    if target.interpreted:  # "auto" never picks the interpreter
        assert _dispatch.choose("concentration_loss", "auto", "cpu") != "triton"


def test_concentration_and_centers(target, shape, dtype, layout, gen):
    b, k, h, w = shape
    if refused(target, "concentration_loss", k + 1):
        return
    pred = make((b, k + 1, h, w), layout, F64, gen, scale=3.0)
    check(target, losses.concentration_loss, [pred], dtype)
    probs = torch.softmax(pred.detach(), 1)[:, 1:]
    check(target, losses.batch_get_centers, [probs], dtype)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_and_equivariance(target, shape, dtype, layout, padding, gen):
    b, k, h, w = shape
    pts = pts_for(b, gen)
    x = make((b, 3, h, w), layout, F64, gen)
    check(
        target,
        lambda x, p, backend: tps.tps_warp(x, p, padding_mode=padding, backend=backend),
        [x, pts],
        dtype,
        WARP_ATOL,
        n_grad=1,
    )
    if refused(target, "equivariance_losses", k + 1):
        return
    pred = make((b, k + 1, h, w), layout, F64, gen, scale=2.0)
    pred_tps = make((b, k + 1, h, w), layout, F64, gen, scale=2.0)
    check(
        target,
        lambda p, q, s, backend: losses.equivariance_losses(
            p, q, s, padding_mode=padding, backend=backend
        ),
        [pred, pred_tps, pts],
        dtype,
        WARP_ATOL,
        n_grad=2,
    )


def test_semantic_dense(target, shape, dtype, layout, gen):
    b, k, h, w = shape
    pred = make((b, k + 1, h, w), layout, F64, gen, scale=2.0)
    # 20 channels: Triton's channel chunks of 16 end in a masked one.
    feats = make((b, 20, h, w), layout, F64, gen)
    basis = torch.rand(k, 20, generator=gen, dtype=F64)
    check(
        target,
        lambda p, m, f, backend: losses.semantic_consistency_loss(f, p, m, backend=backend),
        [pred, basis, feats],
        dtype,
        n_grad=2,
    )


@pytest.mark.parametrize("saliency", [False, True])
def test_semantic_lowres(target, shape, dtype, layout, saliency, gen):
    b, k, h, w = shape
    if refused(target, "semantic_consistency_loss_lowres", k + 1):
        return
    pred = make((b, k + 1, h, w), layout, F64, gen, scale=2.0)
    low, sal, basis = lowres_case(b, k, h, w, F64, gen, saliency)
    n_low = len(low)

    def fn(p, m, *rest, backend):
        maps, s = list(rest[:n_low]), (rest[n_low] if saliency else None)
        return losses.semantic_consistency_loss_lowres(maps, p, m, s, backend=backend)

    inputs = [pred, basis.detach(), *low] + ([sal] if saliency else [])
    check(target, fn, inputs, dtype, n_grad=2)


def test_lowres_one_pixel_feature_map_and_one_row_output(target, gen):
    # Degenerate upsampling axes: h = w = 1 (every pixel reads one vector) and H = 1.
    pred = make((2, 3, 1, 9), "contiguous", F64, gen, scale=2.0)
    low = torch.randn(2, 4, 1, 1, generator=gen, dtype=F64)
    basis = torch.rand(2, 4, generator=gen, dtype=F64)
    check(
        target,
        lambda p, m, v, backend: losses.semantic_consistency_loss_lowres(v, p, m, backend=backend),
        [pred, basis, low],
        F64,
        n_grad=2,
    )


@pytest.mark.rounding
def test_lowres_matches_dense_at_a_training_like_shape(target, gen):
    # SPEC section 8's features, scaled down: 4x4 -> 32x32, saliency-masked. Two float32
    # computations against each other: at most 8.9e-8 apart (every target, AVX2 or ATen's
    # portable kernels, inputs moved by one ulp), the reference 1.2e-7 from float64; 1e-5.
    dev = target.device
    pred = torch.randn(1, 9, 32, 32, generator=gen).to(dev) * 2
    low = torch.randn(1, 24, 4, 4, generator=gen).to(dev)
    sal = torch.rand(1, 32, 32, generator=gen).to(dev)
    basis = torch.rand(8, 24, generator=gen).to(dev)
    dense_v = reference.upsample_features(low, 32, 32, sal)
    expected = losses.semantic_consistency_loss(dense_v, pred, basis, backend="reference")
    got = losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend=target.backend)
    assert rel_error(got, expected) <= 1e-5
    got = losses.semantic_consistency_loss(dense_v, pred, basis, backend=target.backend)
    assert rel_error(got, expected) <= 1e-5


def test_gradcheck_float64(target, gen):
    from backend_checks import gradcheck_cases

    for fn, inputs in gradcheck_cases(target.backend, gen, target.device):
        # Emulated, a full Jacobian takes minutes: random directions instead.
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=target.emulated)


def test_deterministic_across_runs(target):
    def run():
        return run_all_ops(target.backend, target.run_all_shape, 18, (3, 4), device=target.device)

    first, second = run(), run()
    if target.backend == "reference" and target.device == "cuda":
        # torch's grid_sample backward adds atomically on CUDA: equal up to rounding only.
        for (va, ga), (vb, gb) in zip(first, second, strict=True):
            assert rel_error(va, vb) <= 1e-6
            for x, y in zip(ga, gb, strict=True):
                assert rel_error(x, y) <= 1e-5
        return
    assert_bitwise_equal(first, second)
    if target.device == "cpu" and not target.interpreted:
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1 if threads > 1 else 2)
            assert_bitwise_equal(first, run())
        finally:
            torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fixed_point_adjoint_edge_cases(target, gen):
    dev = target.device
    namespace = TRITON if target.backend == "triton" else NATIVE
    warp_backward = getattr(torch.ops, namespace).tps_warp_backward
    pts = pts_for(1, gen).to(dev)
    mapping = reference.tps_mapping(pts)
    zeros = torch.zeros(1, 2, 6, 5, device=dev)
    assert torch.equal(warp_backward(zeros, mapping, False), zeros)
    # A non-finite upstream gradient must not come back as finite numbers.
    g = torch.randn(1, 2, 6, 5, generator=gen).to(dev)
    g[0, 1, 2, 3] = float("nan")
    assert torch.isnan(warp_backward(g, mapping, False)).any()
    pred = torch.randn(1, 3, 6, 5, generator=gen).to(dev)
    pred[0, 1, 2, 3] = float("inf")
    pred.requires_grad_(True)
    lm = losses.equivariance_losses(pred, pred.detach().flip(3), pts, backend=target.backend)[1]
    (grad,) = torch.autograd.grad(lm, pred)
    assert torch.isnan(grad).any()
    # Tiny gradients keep their relative precision: the scale follows their size.
    g = torch.randn(1, 2, 6, 5, generator=gen, dtype=F64).to(dev) * 1e-200
    x = torch.zeros(1, 2, 6, 5, dtype=F64, device=dev, requires_grad=True)
    (expected,) = torch.autograd.grad(reference.tps_warp(x, pts), x, g)
    assert rel_error(warp_backward(g, mapping, False), expected) <= 1e-10


def test_compile_fullgraph_has_no_graph_breaks(target, gen):
    dev, be = target.device, target.backend

    def r(*shape, grad=False):
        return torch.randn(*shape, generator=gen).to(dev).requires_grad_(grad)

    pred, pred_tps = r(2, 4, 9, 7, grad=True), r(2, 4, 9, 7, grad=True)
    low, feats, sal = r(2, 6, 3, 3), r(2, 6, 9, 7), torch.rand(2, 9, 7, generator=gen).to(dev)
    basis = torch.rand(3, 6, generator=gen).to(dev).requires_grad_(True)
    pts = source_points(2, F32, gen).to(dev)

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
    assert rel_error(got, expected) <= 1e-6
    ge = torch.autograd.grad(expected, (pred, pred_tps, basis))
    gc = torch.autograd.grad(got, (pred, pred_tps, basis))
    for a, e in zip(gc, ge, strict=True):
        assert rel_error(a, e) <= 1e-6


def derivative_calls(target, gen):
    """(pred, {op: fn() -> scalar}): every fused op of the target, differentiated with
    respect to pred."""
    pred = torch.randn(2, 4, 9, 7, generator=gen).to(target.device).requires_grad_(True)
    calls = loss_calls(pred.shape, gen, target.device)
    return pred, {op: functools.partial(fn, pred, target.backend) for op, fn in calls.items()}


def test_batched_gradients(target, gen):
    """torch.autograd.grad(is_grads_batched=True), as Jacobian code calls it: the backward
    runs under vmap, one row per upstream gradient."""
    pred, calls = derivative_calls(target, gen)
    rows = torch.tensor([1.0, -2.5, 0.0], device=target.device)
    for op, fn in calls.items():
        (plain,) = torch.autograd.grad(fn(), pred)
        (batched,) = torch.autograd.grad(fn(), pred, rows, is_grads_batched=True)
        assert batched.shape == (3, *pred.shape), op
        for row, scale in zip(batched, rows.tolist(), strict=True):
            assert rel_error(row, scale * plain) <= 1e-6, (op, scale)


def test_second_derivatives_raise_naming_the_op(target, gen):
    """The kernels give first derivatives only. With create_graph=True the first gradient is
    the plain one, and differentiating it again raises, naming the op and the reference
    (before, it came out zero or partial, with only torch's warning)."""
    be = target.backend
    pred, calls = derivative_calls(target, gen)
    for op, fn in calls.items():
        (plain,) = torch.autograd.grad(fn(), pred)
        (first,) = torch.autograd.grad(fn(), pred, create_graph=True)
        if be == "reference":  # on a GPU: grid_sample's backward adds atomically
            assert rel_error(first, plain) <= 1e-6, op
            assert torch.autograd.grad(first.square().sum(), pred)[0].abs().sum() > 0, op
            continue
        assert torch.equal(first, plain), op
        with pytest.raises(RuntimeError, match=r"::\w+ has first derivatives only: .*reference"):
            torch.autograd.grad(first.square().sum(), pred)
