"""TPS grid properties and RandTPS draws against SPEC section 6."""

import itertools
import math

import pytest
import torch
from conftest import assert_rel

from scops_fast import tps


def test_target_points_order():
    axis = (-1, -0.5, 0, 0.5, 1)
    expected = torch.tensor(list(itertools.product(axis, axis)), dtype=torch.float32)
    assert tps.TARGET_POINTS.shape == (25, 2)
    assert torch.equal(tps.TARGET_POINTS, expected)


def test_identity_points_give_identity_warp(gen):
    x = torch.randn(2, 3, 11, 7, generator=gen, dtype=torch.float64)
    same = tps.TARGET_POINTS.double().expand(2, -1, -1)
    assert_rel(tps.tps_warp(x, same), x, 1e-10, "identity warp")


def test_spline_interpolates_control_points(gen):
    # On a 5x5 image the align_corners pixel positions are the control points, and a
    # thin-plate spline passes exactly through its control points.
    src = tps.TARGET_POINTS.double() + 0.2 * torch.randn(
        3, 25, 2, generator=gen, dtype=torch.float64
    )
    grid = tps.tps_grid(src, 5, 5)
    for i, j in itertools.product(range(5), range(5)):
        assert_rel(grid[:, i, j], src[:, j * 5 + i], 1e-10, f"pixel {(i, j)}")


def test_affine_points_give_affine_grid(gen):
    # A spline through affinely moved points is that affine map: no bending.
    a = torch.tensor([[0.8, -0.3], [0.25, 1.1]], dtype=torch.float64)
    t = torch.tensor([0.05, -0.1], dtype=torch.float64)
    src = (tps.TARGET_POINTS.double() @ a.T + t)[None]
    grid = tps.tps_grid(src, 6, 9)
    xs, ys = (
        torch.linspace(-1, 1, 9, dtype=torch.float64),
        torch.linspace(-1, 1, 6, dtype=torch.float64),
    )
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    expected = torch.stack((gx, gy), -1) @ a.T + t
    assert_rel(grid[0], expected, 1e-10, "affine grid")


def fit_similarity(target, source):
    """Least-squares z_s = a z_t + t over complex points: returns angle (deg), scale,
    translation (B, 2) and the residual (B, 25)."""
    zt = torch.complex(target[..., 0], target[..., 1])
    zs = torch.complex(source[..., 0], source[..., 1])
    zt_c = zt - zt.mean(-1, keepdim=True)
    zs_c = zs - zs.mean(-1, keepdim=True)
    a = (zs_c * zt_c.conj()).sum(-1) / (zt_c.abs() ** 2).sum(-1)
    shift = zs.mean(-1) - a * zt.mean(-1)
    resid = (zs - (a[:, None] * zt + shift[:, None])).abs()
    return torch.rad2deg(a.angle()), a.abs(), torch.stack((shift.real, shift.imag), -1), resid


def draws(n_batches, **kwargs):
    gen = torch.Generator().manual_seed(7)
    warp = tps.RandTPS(32, 24, generator=gen, **kwargs)
    points = []
    for _ in range(n_batches):
        warp.reset_control_points()
        points.append(warp.source_control_points.double().clone())
    return torch.cat(points)


def test_affine_draws_cover_the_spec_ranges():
    scale_range = (0.7, 2.0)
    src = draws(100, batch_size=16, random_mirror=False, random_scale=scale_range, sigma=0.01)
    target = tps.TARGET_POINTS.double().expand(len(src), -1, -1)
    angle, scale, shift, resid = fit_similarity(target, src)
    tol = 0.03  # what the +-0.01 jitter can move a fitted parameter
    assert angle.abs().max() <= 60 + 2 and angle.max() > 55 and angle.min() < -55
    assert abs(float(angle.mean())) < 5
    lo, hi = 1 / scale_range[1], 1 / scale_range[0]
    assert scale.min() >= lo - tol and scale.max() <= hi + tol
    assert scale.min() < lo + 0.05 and scale.max() > hi - 0.05
    assert shift.abs().max() <= 0.1 + tol and shift.abs().max() > 0.09
    # Jitter: uniform +-sigma per coordinate, scaled by s <= 1/0.7; the fitted
    # similarity absorbs part of it and misplaces the rest by at most as much again.
    assert resid.max() <= 2 * 0.01 * math.sqrt(2) * hi
    assert resid.mean() > 0.002


def test_mirror_flips_whole_batches():
    src = draws(200, batch_size=4, random_mirror=True, random_scale=(0.7, 1.1))
    target = tps.TARGET_POINTS.double().expand(len(src), -1, -1)
    _, _, _, resid_plain = fit_similarity(target, src)
    mirrored_back = src * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    _, _, _, resid_mirror = fit_similarity(target, mirrored_back)
    mirrored = (resid_mirror.max(-1).values < resid_plain.max(-1).values).view(200, 4)
    # One draw per batch: all four elements agree.
    assert bool((mirrored.all(1) | ~mirrored.any(1)).all())
    fraction = mirrored[:, 0].double().mean()
    assert 0.35 < fraction < 0.65


def test_generator_makes_draws_repeatable():
    a = tps.RandTPS(16, 16, batch_size=3, generator=torch.Generator().manual_seed(3))
    b = tps.RandTPS(16, 16, batch_size=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.source_control_points, b.source_control_points)
    a.reset_control_points()
    assert not torch.equal(a.source_control_points, b.source_control_points)
    b.reset_control_points()
    assert torch.equal(a.source_control_points, b.source_control_points)


def test_projective_mode_draws():
    gen = torch.Generator().manual_seed(5)
    warp = tps.RandTPS(
        20,
        12,
        batch_size=64,
        mode="projective",
        random_mirror=False,
        random_scale=(0.7, 1.1),
        generator=gen,
    )
    src = warp.source_control_points
    assert src.shape == (64, 25, 2) and torch.isfinite(src).all()
    target = tps.TARGET_POINTS.double().expand(64, -1, -1)
    angle, scale, _, resid = fit_similarity(target, src.double())
    # In-plane rotation still spans +-60 degrees; the tilts add a perspective part
    # that a similarity cannot fit, unlike the jitter alone.
    assert angle.abs().max() < 70 and angle.abs().max() > 40
    assert resid.max() > 0.05
    assert 0.6 < float(scale.mean()) < 1.6


@pytest.mark.rounding
def test_randtps_forward_grid_and_padding(gen, nudge):
    """Against grid_sample in float64 on the same grid. Noise model: both float32 warps (the
    cpp kernel and torch's grid_sample, which the reference runs) lie at most 4.6e-7 from it
    (AVX2 or ATen's portable kernels, inputs moved by one ulp or not), and 4.7e-7 from each
    other, too close to 1e-6 to compare them with each other; 2e-6 against float64. Another
    alignment or padding is O(0.1) off."""
    warp = tps.RandTPS(9, 7, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert warp.grid.shape == (2, 7, 9, 2)
    x = nudge(torch.randn(2, 3, 7, 9, generator=gen))
    grid = warp.grid.double()
    expected = torch.nn.functional.grid_sample(x.double(), grid, align_corners=True)
    assert_rel(warp(x), expected, 2e-6, "forward")
    border = torch.nn.functional.grid_sample(
        x.double(), grid, padding_mode="border", align_corners=True
    )
    assert_rel(warp(x, padding_mode="border"), border, 2e-6, "border")
    warp_b = tps.RandTPS(
        9, 7, batch_size=2, border_padding=True, generator=torch.Generator().manual_seed(0)
    )
    assert_rel(warp_b(x), border, 2e-6, "border_padding=True")


def test_randtps_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        tps.RandTPS(8, 8, mode="similarity")
