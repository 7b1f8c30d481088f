"""Numerical edge cases, every fast backend against the reference:

- logits of +-1e4 and mixes with +-inf and NaN: NaN (and inf) exactly where the reference
  has them, the finite values close; gradients close where everything is finite; no crash
  or hang anywhere (an alarm fails a test that runs too long);
- NaN in gives NaN out (a NaN logit, feature, basis entry, saliency or source point);
- float16 / bfloat16 inputs and CPU autocast (bfloat16) within stated tolerances of float32;
- TPS source points far outside the image: zeros (or the border) sampled, with the
  reference's gradients, and gradcheck in float64.
"""

import functools
import signal

import pytest
import torch
from conftest import hang_guard

import scops_fast
from scops_fast import losses, reference, tps

FAST = ["cpp", "triton"]
NAN_WARP_BACKENDS = [None, "reference", "cpp", "triton"]
B, K, H, W = 2, 3, 7, 6
INF, NAN = float("inf"), float("nan")


@pytest.fixture(params=FAST)
def backend(request):
    if request.param not in scops_fast.available_backends():
        pytest.skip(f"{request.param} is not usable in this process")
    return request.param


@pytest.fixture(autouse=True)
def no_hang():
    """A kernel that loops forever on a NaN fails the test instead of the CI job."""

    limit = round(hang_guard(120))

    def timeout(signum, frame):
        raise TimeoutError(f"the test ran for over {limit} s: a hang?")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def points(b=B, seed=3, spread=0.1, scale=1.1, shift=0.0):
    """Generic source points: no sampling position falls exactly on a pixel."""
    noise = torch.randn(b, 25, 2, generator=_gen(seed), dtype=torch.float64)
    return (reference.target_points() * scale + spread * noise + shift).float()


def extreme_logits(case: str) -> torch.Tensor:
    x = torch.randn(B, K + 1, H, W, generator=_gen(1))
    if case == "scale-1e4":
        return x * 1e4
    if case == "one-hot-1e4":
        x[:, 2] = 1e4
        return x
    if case == "channel-minus-1e4":
        x[:, 1] = -1e4
        return x
    if case == "plus-inf-one":
        x[0, 1, 3, 2] = INF
        return x
    if case == "minus-inf-one":
        x[1, 0, 5, 4] = -INF
        return x
    if case == "minus-inf-part":  # P_3 = 0 exactly: still a finite loss
        x[:, 3] = -INF
        return x
    if case == "minus-inf-background":
        x[:, 0] = -INF
        return x
    if case == "plus-inf-pixel":
        x[0, :, 2, 3] = INF
        return x
    if case == "minus-inf-pixel":
        x[1, :, 4, 1] = -INF
        return x
    if case == "mixed":
        u = torch.rand(x.shape, generator=_gen(2))
        x = x * 1e4
        x[u < 0.04] = INF
        x[u > 0.96] = -INF
        return x
    if case == "nan-one":
        x[0, 2, 1, 1] = NAN
        return x
    if case == "nan-image":
        x[1] = NAN
        return x
    raise KeyError(case)


FINITE_CASES = [
    "scale-1e4",
    "one-hot-1e4",
    "channel-minus-1e4",
    "minus-inf-part",
    "minus-inf-background",
]
NONFINITE_CASES = [
    "plus-inf-one",
    "minus-inf-one",
    "plus-inf-pixel",
    "minus-inf-pixel",
    "mixed",
    "nan-one",
    "nan-image",
]


def loss_outputs(x, backend, with_grad=False):
    """Every op applied to logits x (B, K+1, H, W), as {name: tensor}."""
    gen = _gen(5)
    normal = torch.randn(B, K + 1, H, W, generator=gen)
    feats = torch.randn(B, 5, H, W, generator=gen)
    low = [torch.randn(B, 2, 3, 2, generator=gen), torch.randn(B, 3, 4, 3, generator=gen)]
    sal = torch.rand(B, H, W, generator=gen)
    basis = torch.rand(K, 5, generator=gen).requires_grad_(with_grad)
    x = x.clone().requires_grad_(with_grad)
    pts = points()
    out = {
        "concentration": losses.concentration_loss(x, backend=backend),
        "centers": losses.batch_get_centers(torch.softmax(x, 1)[:, 1:], backend=backend),
        "semantic": losses.semantic_consistency_loss(feats, x, basis, backend=backend),
        "lowres": losses.semantic_consistency_loss_lowres(low, x, basis, sal, backend=backend),
    }
    for padding in ("zeros", "border"):
        eqv, lm = losses.equivariance_losses(x, normal, pts, padding_mode=padding, backend=backend)
        out[f"eqv-pred-{padding}"], out[f"lmeqv-pred-{padding}"] = eqv, lm
        eqv, lm = losses.equivariance_losses(normal, x, pts, padding_mode=padding, backend=backend)
        out[f"eqv-tps-{padding}"], out[f"lmeqv-tps-{padding}"] = eqv, lm
        out[f"warp-{padding}"] = tps.tps_warp(x, pts, padding_mode=padding, backend=backend)
    return out, (x, basis)


def assert_same_specials(got, expected, what, rtol=1e-4, floor=1e-30):
    """NaN where expected has NaN, +-inf where it has +-inf, close elsewhere: the largest
    difference relative to the largest value (at least `floor`: a gradient that is zero
    up to rounding has no scale of its own)."""
    got, expected = got.detach().double(), expected.detach().double()
    assert got.shape == expected.shape, what
    nan_g, nan_e = got.isnan(), expected.isnan()
    assert torch.equal(nan_g, nan_e), (
        f"{what}: NaN at {nan_g.nonzero()[:4].tolist()} vs the reference's "
        f"{nan_e.nonzero()[:4].tolist()}"
    )
    assert torch.equal(got.isposinf(), expected.isposinf()), f"{what}: +inf differs"
    assert torch.equal(got.isneginf(), expected.isneginf()), f"{what}: -inf differs"
    finite = expected.isfinite()
    if finite.any():
        g, e = got[finite], expected[finite]
        err = float((g - e).abs().max() / e.abs().max().clamp_min(floor))
        assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("case", FINITE_CASES + NONFINITE_CASES)
def test_extreme_logits_match_the_reference(case, backend):
    x = extreme_logits(case)
    expected, _ = loss_outputs(x, "reference")
    got, _ = loss_outputs(x, backend)
    for name in expected:
        assert_same_specials(got[name], expected[name], f"{case} {name}")


@pytest.mark.parametrize("case", FINITE_CASES)
def test_extreme_logit_gradients_match_the_reference(case, backend):
    x = extreme_logits(case)
    grads = {}
    for name in ("reference", backend):
        out, inputs = loss_outputs(x, name, with_grad=True)
        total = sum(v.float().sum() for k, v in out.items() if k != "centers")
        grads[name] = torch.autograd.grad(total, inputs)
    for i, (g, e) in enumerate(zip(grads[backend], grads["reference"], strict=True)):
        assert_same_specials(g, e, f"{case} gradient {i}", rtol=1e-3)


@pytest.mark.parametrize("case", NONFINITE_CASES)
def test_nonfinite_logits_backward_runs(case, backend):
    """No crash, no hang: the backward of every loss on NaN / inf logits completes."""
    out, inputs = loss_outputs(extreme_logits(case), backend, with_grad=True)
    total = sum(v.float().sum() for k, v in out.items() if k != "centers")
    grads = torch.autograd.grad(total, inputs)
    assert all(g.shape == t.shape for g, t in zip(grads, inputs, strict=True))


def _nan_at(t, index):
    t = t.clone()
    t[index] = NAN
    return t


@pytest.mark.parametrize("name", NAN_WARP_BACKENDS)
def test_nan_in_gives_nan_out(name):
    if name not in (None, "reference") and name not in scops_fast.available_backends():
        pytest.skip(f"{name} is not usable in this process")
    gen = _gen(7)
    pred = torch.randn(B, K + 1, H, W, generator=gen)
    feats = torch.randn(B, 5, H, W, generator=gen)
    low = torch.randn(B, 5, 3, 2, generator=gen)
    basis = torch.rand(K, 5, generator=gen)
    sal = torch.rand(B, H, W, generator=gen)
    pts = points()
    cases = {
        "con/pred": lambda: losses.concentration_loss(_nan_at(pred, (0, 1, 2, 3)), backend=name),
        "centers/probs": lambda: losses.batch_get_centers(
            _nan_at(torch.rand(B, K, H, W), (1, 0, 0, 0)), backend=name
        )[1, 0],
        "sc/features": lambda: losses.semantic_consistency_loss(
            _nan_at(feats, (1, 4, 6, 5)), pred, basis, backend=name
        ),
        "sc/basis": lambda: losses.semantic_consistency_loss(
            feats, pred, _nan_at(basis, (2, 0)), backend=name
        ),
        "lowres/features": lambda: losses.semantic_consistency_loss_lowres(
            _nan_at(low, (0, 0, 2, 1)), pred, basis, sal, backend=name
        ),
        "lowres/saliency": lambda: losses.semantic_consistency_loss_lowres(
            low, pred, basis, _nan_at(sal, (1, 6, 0)), backend=name
        ),
        "lowres/pred": lambda: losses.semantic_consistency_loss_lowres(
            low, _nan_at(pred, (1, 0, 0, 0)), basis, backend=name
        ),
        "eqv/pred_tps": lambda: losses.equivariance_losses(
            pred, _nan_at(pred, (0, 0, 3, 3)), pts, backend=name
        )[0],
        "lmeqv/pred": lambda: losses.equivariance_losses(
            _nan_at(pred, (0, 0, 3, 3)), pred, pts, backend=name
        )[1],
        "lmeqv/points": lambda: losses.equivariance_losses(
            pred, pred, _nan_at(pts, (1, 12, 0)), backend=name
        )[1],
        "lmeqv/points-border": lambda: losses.equivariance_losses(
            pred, pred, _nan_at(pts, (1, 12, 0)), padding_mode="border", backend=name
        )[1],
        "warp/points": lambda: tps.tps_warp(pred, _nan_at(pts, (0, 3, 1)), backend=name)[0],
        "warp/points-border": lambda: tps.tps_warp(
            pred, _nan_at(pts, (0, 3, 1)), padding_mode="border", backend=name
        )[0],
        "warp/inf-points": lambda: tps.tps_warp(
            pred, pts.index_fill(1, torch.tensor([7]), INF), backend=name
        ),
        "orth/w": lambda: losses.orthonormal_loss(_nan_at(basis, (0, 0))),
    }
    for what, call in cases.items():
        out = call()
        assert out.isnan().all(), f"{what}: {out}"


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("name", NAN_WARP_BACKENDS)
def test_nan_source_points_backward_does_not_crash(name, padding):
    """grid_sample reads and writes out of bounds for a NaN position under border padding
    (a segfault in its backward): the warp must never hand it one."""
    if name not in (None, "reference") and name not in scops_fast.available_backends():
        pytest.skip(f"{name} is not usable in this process")
    x = torch.randn(B, 3, H, W, requires_grad=True)
    pts = _nan_at(points(), (0, 0, 0))
    pts[1, 5] = INF
    out = tps.tps_warp(x, pts, padding_mode=padding, backend=name)
    assert out.isnan().all()
    (grad,) = torch.autograd.grad(out.nan_to_num().sum() + out[:, :, 0, 0].sum(), x)
    # A pixel with no finite sampling position reads nothing, so it sends nothing back.
    assert torch.equal(grad, torch.zeros_like(grad))
    pred = torch.randn(B, K + 1, H, W, requires_grad=True)
    eqv, lm = losses.equivariance_losses(pred, pred, pts, padding_mode=padding, backend=name)
    torch.autograd.grad(eqv + lm, pred)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("value", [INF, -INF, NAN])
def test_cpp_warp_of_a_nonfinite_position_is_nan_without_gradient(value, padding):
    """Straight through the op, with spline coefficients that put every pixel at x = value
    (source points give NaN there, rarely a clean inf): border padding must not clamp an
    infinite position into the image."""
    if "cpp" not in scops_fast.available_backends():
        pytest.skip("cpp is not usable in this process")
    mapping = torch.zeros(B, 28, 2, dtype=torch.float64)
    mapping[:, 25, 0] = value  # the constant term of x
    mapping[1, 25, 0] = 0.3  # image 1 stays finite
    x = torch.randn(B, 3, H, W, dtype=torch.float64, requires_grad=True)
    out = torch.ops.scops_fast.tps_warp(x, mapping, padding == "border")
    assert out[0].isnan().all() and out[1].isfinite().all()
    (grad,) = torch.autograd.grad(out[1].sum() + out[0].nan_to_num().sum(), x)
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    assert grad[1].isfinite().all() and grad[1].abs().sum() > 0


# --------------------------------------------------------------------------- precision
HALF_TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _precision_ops(pred, basis, feats, low, sal, pts, backend):
    eqv, lm = losses.equivariance_losses(pred, pred.flip(3), pts, backend=backend)
    return {
        "concentration": losses.concentration_loss(pred, backend=backend),
        "centers": losses.batch_get_centers(torch.softmax(pred, 1)[:, 1:], backend=backend),
        "semantic": losses.semantic_consistency_loss(feats, pred, basis, backend=backend),
        "lowres": losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend=backend),
        "eqv": eqv,
        "lmeqv": lm,
        "warp": tps.tps_warp(pred, pts, backend=backend),
        "warp-border": tps.tps_warp(pred, pts, padding_mode="border", backend=backend),
        "orthonormal": losses.orthonormal_loss(basis),
    }


def _precision_inputs():
    gen = _gen(11)
    return (
        torch.randn(B, K + 1, 12, 10, generator=gen) * 2,
        torch.rand(K, 6, generator=gen),
        torch.randn(B, 6, 12, 10, generator=gen),
        [torch.randn(B, 6, 3, 3, generator=gen)],
        torch.rand(B, 12, 10, generator=gen),
        points(),
    )


def _rel(a, e):
    a, e = a.detach().double(), e.detach().double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["reference", *FAST])
def test_half_precision_inputs_are_within_tolerance_of_float32(dtype, name):
    if name not in scops_fast.available_backends():
        pytest.skip(f"{name} is not usable in this process")
    inputs = _precision_inputs()
    # The float32 result of the same rounded inputs: what computing in float32 gives.
    rounded = [t.to(dtype) if torch.is_tensor(t) else [f.to(dtype) for f in t] for t in inputs]
    as_float = [t.float() if torch.is_tensor(t) else [f.float() for f in t] for t in rounded]
    rounded[-1] = inputs[-1]  # source points stay float32: positions need the bits
    as_float[-1] = inputs[-1]
    half = _precision_ops(*rounded, name)
    full = _precision_ops(*as_float, "reference")
    for key in half:
        assert half[key].dtype == dtype, key
        assert half[key].isfinite().all(), key
        err = _rel(half[key], full[key])
        assert err <= HALF_TOL[dtype], f"{name} {dtype} {key}: {err:.2e}"
    # Gradients come back in the inputs' dtype, within twice the tolerance.
    hp, hb = (t.clone().requires_grad_(True) for t in rounded[:2])
    fp, fb = (t.clone().requires_grad_(True) for t in as_float[:2])
    gh = torch.autograd.grad(_total(_precision_ops(hp, hb, *rounded[2:], name)), (hp, hb))
    gf = torch.autograd.grad(_total(_precision_ops(fp, fb, *as_float[2:], "reference")), (fp, fb))
    for i, (a, e) in enumerate(zip(gh, gf, strict=True)):
        assert a.dtype == dtype
        err = _rel(a, e)
        assert err <= 2 * HALF_TOL[dtype], f"{name} {dtype} gradient {i}: {err:.2e}"


def _total(out):
    return sum(v.float().mean() for v in out.values())


AUTOCAST_TOL = 1e-2


@pytest.mark.parametrize("name", ["reference", *FAST])
def test_cpu_autocast_bfloat16_is_within_tolerance_of_float32(name):
    """Inside `torch.autocast("cpu", torch.bfloat16)`: float32 inputs (matmuls inside the
    losses may run in bfloat16) and bfloat16 logits from an autocast convolution."""
    if name not in scops_fast.available_backends():
        pytest.skip(f"{name} is not usable in this process")
    inputs = _precision_inputs()
    expected = _precision_ops(*inputs, "reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _precision_ops(*inputs, name)
    for key in expected:
        assert got[key].dtype == torch.float32, key
        err = _rel(got[key], expected[key])
        assert err <= AUTOCAST_TOL, f"autocast {name} {key}: {err:.2e}"

    conv = torch.nn.Conv2d(3, K + 1, 3, padding=1)
    images = torch.rand(B, 3, 12, 10, generator=_gen(12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        assert logits.dtype == torch.bfloat16
        got = losses.concentration_loss(logits, backend=name)
        got_eqv = losses.equivariance_losses(logits, logits.flip(3), points(), backend=name)
    logits32 = conv(images)
    exp = losses.concentration_loss(logits32, backend="reference")
    exp_eqv = losses.equivariance_losses(logits32, logits32.flip(3), points(), backend="reference")
    assert _rel(got, exp) <= 3e-2
    for a, e in zip(got_eqv, exp_eqv, strict=True):
        assert _rel(a, e) <= 5e-2
    got.float().backward()  # gradients flow back through the autocast convolution
    assert conv.weight.grad is not None and conv.weight.grad.isfinite().all()


# --------------------------------------------------------------------------- far outside
FAR = [
    ("outside-right", dict(shift=3.0)),
    ("outside-left-up", dict(shift=-2.5)),
    ("huge", dict(shift=1e6)),
    ("steep", dict(scale=1e6)),  # the centre inside, the rest far outside
    ("half-outside", dict(shift=0.9)),
]


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("case, kw", FAR, ids=[c for c, _ in FAR])
def test_far_outside_source_points_match_the_reference(case, kw, padding, backend):
    pts = points(**kw)
    gen = _gen(13)
    x = torch.randn(B, 3, H, W, generator=gen, dtype=torch.float64).requires_grad_(True)
    weight = torch.rand(B, 3, H, W, generator=gen, dtype=torch.float64)
    outs, grads = {}, {}
    for name in ("reference", backend):
        out = tps.tps_warp(x, pts.double(), padding_mode=padding, backend=name)
        outs[name] = out
        (grads[name],) = torch.autograd.grad((out * weight).sum(), x)
    # Steep splines round their positions differently in the last bits.
    assert_same_specials(outs[backend], outs["reference"], f"{case} value", rtol=1e-8)
    assert_same_specials(grads[backend], grads["reference"], f"{case} grad", rtol=1e-8)
    if padding == "zeros" and case not in ("half-outside", "steep"):
        assert torch.equal(outs[backend], torch.zeros_like(x))
    if padding == "border" and case == "huge":
        # Clamped to the border: every output is one of its image's border pixels.
        edge = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
        out = outs[backend].detach().flatten(2)  # (B, C, H*W)
        assert (out[..., :, None] == edge.detach()[..., None, :]).any(-1).all()
    pred = torch.randn(B, K + 1, H, W, generator=gen, dtype=torch.float64)
    pred_tps = torch.randn(B, K + 1, H, W, generator=gen, dtype=torch.float64)
    for name in ("reference", backend):
        p, q = pred.clone().requires_grad_(True), pred_tps.clone().requires_grad_(True)
        eqv, lm = losses.equivariance_losses(p, q, pts.double(), padding_mode=padding, backend=name)
        outs[name] = torch.stack((eqv, lm))
        grads[name] = torch.autograd.grad(eqv + 10 * lm, (p, q))
    assert_same_specials(outs[backend], outs["reference"], f"{case} losses", rtol=1e-8)
    for i in range(2):
        g, e = grads[backend][i], grads["reference"][i]
        assert_same_specials(g, e, f"{case} grad {i}", rtol=1e-8, floor=1e-6)


@pytest.mark.parametrize("name", FAST)  # the reference's gradients are torch's own
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_gradcheck_far_outside(name, padding):
    if name not in scops_fast.available_backends():
        pytest.skip(f"{name} is not usable in this process")
    # On CPU tensors Triton runs in its interpreter, where a full Jacobian (a launch per
    # column) took a minute per case: random directions there (gradcheck's fast mode, its own
    # fixed generator), as test_backends does for emulated targets; cpp checks every column.
    check = functools.partial(torch.autograd.gradcheck, fast_mode=name == "triton")
    pts = points(b=1, shift=0.95, spread=0.3).double()  # part inside, part far outside
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    q = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert check(lambda x: tps.tps_warp(x, pts, padding_mode=padding, backend=name), (x,))
    assert check(
        lambda p, q: losses.equivariance_losses(p, q, pts, padding_mode=padding, backend=name)[1],
        (x.detach()[:, :1].repeat(1, 3, 1, 1).requires_grad_(True), q),
    )
    far = points(b=1, shift=40.0).double()
    pred = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    assert check(
        lambda q: losses.equivariance_losses(pred, q, far, padding_mode=padding, backend=name)[0],
        (q,),
    )
