"""scops_fast.reference against the naive per-(b, k) loops of tests/naive.py.

Noise model (marked `rounding`): the naive loops run in float64, so a float32 case measures
the reference's own float32 error, which the CPU's kernels (ATen's vector width, MKL) shape.
It is at most 7.4 % of its tolerance (1e-5; warps 3.2 % of 1e-4) here with AVX2 kernels,
and `make test-rounding` reruns it on ATen's portable kernels and one and three threads.
"""

import naive
import pytest
import torch
from conftest import assert_rel

from scops_fast import losses, reference, tps

pytestmark = pytest.mark.rounding

# (B, K, H, W): odd, non-square, K=1, B=1.
SHAPES = [(2, 3, 7, 9), (1, 1, 6, 5), (3, 4, 5, 5), (2, 2, 9, 4)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
WARP_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]


def leaf(t, dtype):
    return t.to(dtype).detach().requires_grad_(True)


def compare(fn_fast, fn_naive, inputs, dtype, tol, n_grad=None):
    """Values and gradients (w.r.t. the first n_grad inputs) of fn_fast in `dtype`
    against fn_naive in float64, under one random upstream weight per output."""
    n_grad = len(inputs) if n_grad is None else n_grad
    fast_in = [leaf(t, dtype) if i < n_grad else t.to(dtype) for i, t in enumerate(inputs)]
    slow_in = [leaf(t, torch.float64) if i < n_grad else t.double() for i, t in enumerate(inputs)]
    fast_out, slow_out = fn_fast(*fast_in), fn_naive(*slow_in)
    if torch.is_tensor(fast_out):
        fast_out, slow_out = (fast_out,), (slow_out,)
    weights = [torch.rand(o.shape, dtype=torch.float64) + 0.5 for o in slow_out]
    for a, e in zip(fast_out, slow_out, strict=True):
        assert a.dtype == dtype
        assert_rel(a, e, tol[dtype], "value")
    fast_grads = torch.autograd.grad(
        sum((o * w.to(dtype)).sum() for o, w in zip(fast_out, weights, strict=True)),
        fast_in[:n_grad],
        allow_unused=True,
    )
    slow_grads = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(slow_out, weights, strict=True)),
        slow_in[:n_grad],
        allow_unused=True,
    )
    for i, (a, e) in enumerate(zip(fast_grads, slow_grads, strict=True)):
        assert_rel(a, e, tol[dtype], f"gradient of input {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_concentration(shape, dtype, gen):
    b, k, h, w = shape
    pred = 3 * torch.randn(b, k + 1, h, w, generator=gen, dtype=torch.float64)
    compare(losses.concentration_loss, naive.concentration, [pred], dtype, TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_centers(shape, dtype, gen):
    b, k, h, w = shape
    probs = torch.rand(b, k, h, w, generator=gen, dtype=torch.float64)
    compare(losses.batch_get_centers, naive.centers, [probs], dtype, TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_semantic_dense(shape, dtype, gen):
    b, k, h, w = shape
    c = 5
    pred = 2 * torch.randn(b, k + 1, h, w, generator=gen, dtype=torch.float64)
    feats = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    basis = torch.rand(k, c, generator=gen, dtype=torch.float64)
    # Gradients flow to pred and basis only: features are frozen targets.
    compare(
        lambda p, m, f: losses.semantic_consistency_loss(f, p, m),
        lambda p, m, f: naive.semantic(f, p, m),
        [pred, basis, feats],
        dtype,
        TOL,
        n_grad=2,
    )


@pytest.mark.parametrize("saliency", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_semantic_lowres(shape, dtype, saliency, gen):
    b, k, h, w = shape
    low = [
        torch.randn(b, 3, 2, 3, generator=gen, dtype=torch.float64),
        torch.randn(b, 2, 3, 2, generator=gen, dtype=torch.float64),
    ]
    pred = 2 * torch.randn(b, k + 1, h, w, generator=gen, dtype=torch.float64)
    basis = torch.rand(k, 5, generator=gen, dtype=torch.float64)
    sal = torch.rand(b, h, w, generator=gen, dtype=torch.float64) if saliency else None

    def fast(p, m):
        return losses.semantic_consistency_loss_lowres(
            [f.to(p.dtype) for f in low], p, m, None if sal is None else sal.to(p.dtype)
        )

    def slow(p, m):
        return naive.semantic_lowres(low, p, m, sal)

    compare(fast, slow, [pred, basis], dtype, TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_semantic_lowres_single_tensor_equals_list(dtype, gen):
    pred = torch.randn(2, 4, 8, 6, generator=gen, dtype=dtype)
    feats = torch.randn(2, 6, 3, 3, generator=gen, dtype=dtype)
    basis = torch.rand(3, 6, generator=gen, dtype=dtype)
    whole = losses.semantic_consistency_loss_lowres(feats, pred, basis)
    split = losses.semantic_consistency_loss_lowres([feats[:, :2], feats[:, 2:]], pred, basis)
    assert torch.equal(whole, split)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, scale", [(1, 1e-3), (4, 1e-3), (4, 1.0), (8, 1.0)])
def test_orthonormal(k, scale, dtype, gen):
    # At unit scale a K=1 loss is pure rounding noise (1 - |wn|^2 ~ 1e-7); a small w
    # makes the 1e-6 under the root matter, so the value is well conditioned.
    w = scale * torch.randn(k, 7, generator=gen, dtype=torch.float64)
    compare(losses.orthonormal_loss, naive.orthonormal, [w], dtype, TOL)
    assert losses.orthonomal_loss is losses.orthonormal_loss


def random_points(b, gen, spread=0.15):
    base = reference.target_points()
    return base + spread * torch.randn(b, 25, 2, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(7, 9), (6, 5), (5, 5)])
def test_tps_warp(hw, dtype, padding, gen):
    h, w = hw
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    # Spread source points so that some samples fall outside the image.
    pts = random_points(2, gen) * 1.3
    compare(
        lambda a, s: tps.tps_warp(a, s, padding_mode=padding),
        lambda a, s: naive.tps_warp(a, s, padding),
        [x, pts],
        dtype,
        WARP_TOL,
        n_grad=1,
    )


@pytest.mark.parametrize("hw", [(7, 9), (4, 6)])
def test_tps_grid(hw, gen):
    pts = random_points(3, gen)
    assert_rel(tps.tps_grid(pts, *hw), naive.tps_grid(pts, *hw), 1e-10, "grid")


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_equivariance(shape, dtype, padding, gen):
    b, k, h, w = shape
    pred = 2 * torch.randn(b, k + 1, h, w, generator=gen, dtype=torch.float64)
    pred_tps = 2 * torch.randn(b, k + 1, h, w, generator=gen, dtype=torch.float64)
    pts = random_points(b, gen)
    compare(
        lambda p, q: losses.equivariance_losses(p, q, pts.to(p.dtype), padding_mode=padding),
        lambda p, q: naive.equivariance(p, q, pts, padding),
        [pred, pred_tps],
        dtype,
        WARP_TOL,
    )
