"""The names the original's scripts import from its `loss` module, against what that
module computes: `from scops_fast import losses as loss` keeps them working."""

import pytest
import torch
from conftest import assert_rel
from original_fixtures import load

from scops_fast import losses


def test_softmax_is_the_original_channel_softmax():
    f = load("losses")
    assert isinstance(losses.softmax, torch.nn.Module)
    assert torch.equal(losses.softmax(f["softmax.input"]), f["softmax.output"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_get_variance_matches_the_original(dtype):
    f = load("losses")
    part = f[f"variance_{dtype}.part_map"]
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
def test_concentration_matches_the_original(backend):
    f = load("losses")
    out = losses.concentration_loss(f["concentration.input"], backend=backend)
    assert_rel(out, f["concentration.loss"], 1e-6)
