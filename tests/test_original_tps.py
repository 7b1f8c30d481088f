"""RandTPS against the original (WarBean's TPSGridGen under NVlabs' RandTPS): the same
draws give the same source points, grid and warps (SPEC section 6).

Noise model (tests marked `rounding`; scripts/measure_rounding.py). The record is the
original's float32 result on the machine that made it, fixed; only our side depends on this
CPU. Source points: ours are computed in float64 from the recorded draws (float64 rounding,
~1e-16, on any CPU) and lie 2.7e-7 from the record's float32 ones, against 1e-6. Grid: our
float64 solve lies 6.6e-6 to 9.1e-6 from the original's float32 one (which misses its own
control points by ~6e-6); one-ulp moves of the float32 source points move ours by at most
4.8e-7, and the tolerance 2e-5 leaves 23x that. Warps: 3.7e-5 to 5.3e-5 from the record
(the grid's difference, times the image's slope); one-ulp moves of the image and points move
them by at most 3.4e-6, and 1e-4 leaves 14x that.
"""

import math

import pytest
import torch
from conftest import assert_rel
from original_fixtures import load

from scops_fast.tps import source_points_from_draws, tps_grid, tps_warp

CASES = load("tps").cases()


def draws(case: str, nudge=lambda t: t) -> dict:
    f = load("tps")
    deg = math.pi / 180.0  # the original converts its degrees like this, in float64
    mode = case.split("_")[0]
    kwargs = {
        "perturbation": nudge(f[f"{case}.perturbation"].double()),
        "angle": f[f"{case}.angle"] / 180.0 * math.pi,
        "scale": f[f"{case}.scale"],
        "mirror": bool(f[f"{case}.mirror"]),
    }
    if mode == "affine":
        kwargs["shift"] = torch.stack((f[f"{case}.shift_x"], f[f"{case}.shift_y"]), -1)
    else:
        kwargs["tilt"] = torch.stack((f[f"{case}.tilt_x"], f[f"{case}.tilt_y"]), -1) * deg
    return {"mode": mode, **kwargs}


def test_every_case_is_there():
    assert CASES == ["affine_mirror", "affine_plain", "projective_mirror", "projective_plain"]
    f = load("tps")
    assert bool(f["affine_mirror.mirror"]) and bool(f["projective_mirror.mirror"])


@pytest.mark.rounding
@pytest.mark.parametrize("case", CASES)
def test_source_points_match_the_original(case, nudge):
    d = draws(case, nudge)
    points = source_points_from_draws(d.pop("mode"), **d)
    expected = load("tps")[f"{case}.source_points"].double()
    # The original computes in float32; ours in float64.
    assert (points - expected).abs().max() <= 1e-6


def test_projective_order_matters_on_these_draws():
    """The fixture tells Rx Ry Rz_s from the reversed product (the bug SPEC 6 corrected)."""
    from scops_fast import tps

    d = draws("projective_plain")
    rz = tps._rotation(2, d["angle"])
    rz[:, :2, :2] *= d["scale"][:, None, None]
    wrong = rz @ tps._rotation(1, d["tilt"][:, 1]) @ tps._rotation(0, d["tilt"][:, 0])
    pts = tps._ref.target_points().expand(len(d["angle"]), -1, -1) + d["perturbation"]
    h = torch.cat((pts, torch.ones_like(pts[..., :1])), -1) @ wrong.transpose(1, 2)
    expected = load("tps")["projective_plain.source_points"].double()
    assert (h[..., :2] / h[..., 2:] - expected).abs().max() > 1e-3


@pytest.mark.rounding
@pytest.mark.parametrize("case", CASES)
def test_grid_and_warps_match_the_original(case, nudge):
    f = load("tps")
    points = nudge(f[f"{case}.source_points"])
    x = nudge(f[f"{case}.input"], seed=1)
    h, w = x.shape[-2:]
    # The original's TPSGridGen solves in float32 and misses its control points by ~6e-6.
    assert (tps_grid(points, h, w).double() - f[f"{case}.grid"].double()).abs().max() <= 2e-5
    for padding in ("zeros", "border"):
        out = tps_warp(x, points, padding_mode=padding, backend="reference")
        assert_rel(out, f[f"{case}.warped_{padding}"], 1e-4, f"{case} {padding}")
