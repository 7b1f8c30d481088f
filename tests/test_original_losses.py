"""The names the original's scripts import from its `loss` module, against what that
module computes: `from scops_fast import losses as loss` keeps them working.

Noise model (tests marked `rounding`; scripts/measure_rounding.py moves the inputs by one
float32 ulp, up or down at random). The record is the original's float32 result on the
machine that made it. The channel softmax's exponentials are vectorised per CPU: one-ulp
moves of its input move it by up to 8 ulp, 1.4e-7 relative to its largest entry, so it is
held to 1e-6, not bit for bit (a softmax over the wrong axis is 0.77 off). The concentration
loss moves by 9e-8 (cpp; the reference not at all) and is 9e-8 from the record; get_variance
in float32 moves by less than one ulp of its result. Both are held to 1e-6.
"""

import pytest
import torch
from conftest import assert_rel
from original_fixtures import load

import scops_fast
from scops_fast import losses

pytestmark = pytest.mark.rounding


def test_softmax_is_the_original_channel_softmax(nudge):
    f = load("losses")
    assert isinstance(losses.softmax, torch.nn.Module)
    assert_rel(losses.softmax(nudge(f["softmax.input"])), f["softmax.output"], 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_get_variance_matches_the_original(dtype, nudge):
    f = load("losses")
    part = nudge(f[f"variance_{dtype}.part_map"])
    x_c, y_c = f[f"variance_{dtype}.center"].tolist()
    v_x, v_y = losses.get_variance(part, x_c, y_c)
    assert str(v_x.dtype) == str(f[f"variance_{dtype}.v_dtype"])
    expected = f[f"variance_{dtype}.v"]
    assert_rel(torch.stack((v_x, v_y)).double(), expected, 1e-6 if dtype == "float32" else 1e-12)


def test_get_variance_of_a_non_square_map_uses_columns_for_x():
    part = torch.zeros(3, 5, dtype=torch.float64)
    part[1, 4] = 1.0  # row 1 (y = 2/3 - 1), column 4 (x = 8/5 - 1)
    v_x, v_y = losses.get_variance(part, 0.0, 0.0)
    assert v_x.item() == pytest.approx(0.6**2, rel=1e-6)
    assert v_y.item() == pytest.approx((1 / 3) ** 2, rel=1e-6)


def test_get_variance_names_its_argument():
    with pytest.raises(ValueError, match="part_map"):
        losses.get_variance(torch.zeros(2, 3, 4), 0.0, 0.0)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_concentration_matches_the_original(backend, nudge):
    if backend not in scops_fast.available_backends():
        pytest.skip(f"backend {backend} is not available here")
    f = load("losses")
    out = losses.concentration_loss(nudge(f["concentration.input"]), backend=backend)
    assert_rel(out, f["concentration.loss"], 1e-6)
