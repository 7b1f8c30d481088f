"""torch.autograd.gradcheck of every reference op in float64 on tiny sizes."""

import pytest
import torch

from scops_fast import losses, tps


def t(*shape, gen, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_(True)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 2, 3, 6)])
def test_concentration_and_centers(shape, gen):
    assert torch.autograd.gradcheck(losses.concentration_loss, (t(*shape, gen=gen),))
    probs = torch.rand(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.batch_get_centers, (probs,))


def test_semantic(gen):
    feats = torch.randn(2, 5, 4, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p, m: losses.semantic_consistency_loss(feats, p, m),
        (t(2, 4, 4, 3, gen=gen), t(3, 5, gen=gen)),
    )
    low = torch.randn(2, 5, 2, 2, generator=gen, dtype=torch.float64)
    sal = torch.rand(2, 5, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p, m: losses.semantic_consistency_loss_lowres(low, p, m, sal),
        (t(2, 4, 5, 3, gen=gen), t(3, 5, gen=gen)),
    )
    # Features and saliency that require grad: differentiated, as in the original.
    basis = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    sal = torch.rand(2, 5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(
        losses.semantic_consistency_loss,
        (t(2, 5, 4, 3, gen=gen), t(2, 4, 4, 3, gen=gen), t(3, 5, gen=gen)),
    )
    assert torch.autograd.gradcheck(
        lambda v, s, p: losses.semantic_consistency_loss_lowres(v, p, basis, s),
        (t(2, 5, 2, 2, gen=gen), sal, t(2, 4, 5, 3, gen=gen)),
    )


def test_orthonormal(gen):
    assert torch.autograd.gradcheck(losses.orthonormal_loss, (t(3, 5, gen=gen),))


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_and_equivariance(padding, gen):
    pts = tps.TARGET_POINTS.double() * 1.2 + 0.1 * torch.randn(
        2, 25, 2, generator=gen, dtype=torch.float64
    )
    assert torch.autograd.gradcheck(
        lambda x: tps.tps_warp(x, pts, padding_mode=padding), (t(2, 3, 5, 4, gen=gen),)
    )
    # L_eqv treats pred as a constant target (detached), which finite differences
    # cannot see, so it is checked w.r.t. pred_tps only; L_lmeqv w.r.t. both.
    pred = t(2, 3, 5, 4, gen=gen)
    assert torch.autograd.gradcheck(
        lambda q: losses.equivariance_losses(pred.detach(), q, pts, padding_mode=padding)[0],
        (t(2, 3, 5, 4, gen=gen),),
    )
    assert torch.autograd.gradcheck(
        lambda p, q: losses.equivariance_losses(p, q, pts, padding_mode=padding)[1],
        (pred, t(2, 3, 5, 4, gen=gen)),
    )


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_and_equivariance_wrt_source_points(padding, gen):
    """Source points that need a gradient get one through "auto", which passes the fused
    kernels over for the reference (the kernels take the spline as a constant)."""
    pts = tps.TARGET_POINTS.double() * 1.1 + 0.1 * torch.randn(
        2, 25, 2, generator=gen, dtype=torch.float64
    )
    pts.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, s: tps.tps_warp(x, s, padding_mode=padding), (t(2, 3, 5, 4, gen=gen), pts)
    )
    assert torch.autograd.gradcheck(
        lambda p, s: losses.equivariance_losses(p, p.flip(-1), s, padding_mode=padding)[1],
        (t(2, 3, 5, 4, gen=gen), pts),
    )
