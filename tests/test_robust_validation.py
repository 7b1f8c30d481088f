"""Bad input to every public function: a ValueError or TypeError that names the argument,
what was expected and what was received, and, for the losses and the warp, the same
error from every backend (validation runs before dispatch, so a backend that cannot run
here still reports the bad argument rather than its own unavailability)."""

import re

import numpy as np
import pytest
import torch
from train_helpers import tiny_config

from scops_fast import _dispatch, losses, tps
from scops_fast.eval import landmark_regression_error
from scops_fast.train import build_network, predict_parts

B, K, H, W, C = 2, 3, 6, 5, 4


def r(*shape, **kw):
    return torch.randn(*shape, **kw)


def pred(**kw):
    return r(B, K + 1, H, W, **kw)


def pts(b=B, **kw):
    return torch.rand(b, 25, 2, **kw) * 2 - 1


def low(**kw):
    return r(B, C, 3, 2, **kw)


def basis(**kw):
    return torch.rand(K, C, **kw)


META = {"device": "meta"}
INT = {"dtype": torch.int64}

# (id, call(backend), error, pattern). Patterns anchor the argument's name first, then
# what was expected, then what was received.
BACKEND_CASES = [
    # ---- concentration_loss
    (
        "con-3d",
        lambda b: losses.concentration_loss(r(3, H, W), backend=b),
        ValueError,
        r"^pred: expected a 4-D .*got 3-D",
    ),
    (
        "con-5d",
        lambda b: losses.concentration_loss(r(1, 2, 3, H, W), backend=b),
        ValueError,
        r"^pred: expected a 4-D .*got 5-D",
    ),
    (
        "con-1ch",
        lambda b: losses.concentration_loss(r(B, 1, H, W), backend=b),
        ValueError,
        r"^pred: expected at least 2 channels.*got shape \(2, 1, 6, 5\)",
    ),
    (
        "con-empty-batch",
        lambda b: losses.concentration_loss(r(0, K + 1, H, W), backend=b),
        ValueError,
        r"^pred: expected a non-empty .*got shape \(0, 4, 6, 5\)",
    ),
    (
        "con-zero-h",
        lambda b: losses.concentration_loss(r(B, K + 1, 0, W), backend=b),
        ValueError,
        r"^pred: expected a non-empty .*got shape \(2, 4, 0, 5\)",
    ),
    (
        "con-zero-w",
        lambda b: losses.concentration_loss(r(B, K + 1, H, 0), backend=b),
        ValueError,
        r"^pred: expected a non-empty .*got shape \(2, 4, 6, 0\)",
    ),
    (
        "con-int",
        lambda b: losses.concentration_loss(torch.ones(B, K + 1, H, W, **INT), backend=b),
        TypeError,
        r"^pred: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "con-bool",
        lambda b: losses.concentration_loss(torch.ones(B, 4, H, W).bool(), backend=b),
        TypeError,
        r"^pred: expected a floating-point tensor, got dtype torch.bool",
    ),
    (
        "con-complex",
        lambda b: losses.concentration_loss(pred(dtype=torch.complex64), backend=b),
        TypeError,
        r"^pred: expected a floating-point tensor, got dtype torch.complex64",
    ),
    (
        "con-list",
        lambda b: losses.concentration_loss([[1.0, 2.0]], backend=b),
        TypeError,
        r"^pred: expected a torch.Tensor .*got list",
    ),
    (
        "con-none",
        lambda b: losses.concentration_loss(None, backend=b),
        TypeError,
        r"^pred: expected a torch.Tensor .*got NoneType",
    ),
    (
        "con-numpy",
        lambda b: losses.concentration_loss(np.zeros((B, 4, H, W)), backend=b),
        TypeError,
        r"^pred: expected a torch.Tensor .*got ndarray",
    ),
    (
        "con-float",
        lambda b: losses.concentration_loss(1.5, backend=b),
        TypeError,
        r"^pred: expected a torch.Tensor .*got float",
    ),
    (
        "con-sparse",
        lambda b: losses.concentration_loss(pred().to_sparse(), backend=b),
        TypeError,
        r"^pred: expected a dense \(strided\) tensor .*got layout torch.sparse_coo",
    ),
    # ---- batch_get_centers
    (
        "centers-3d",
        lambda b: losses.batch_get_centers(torch.rand(K, H, W), backend=b),
        ValueError,
        r"^part_probs: expected a 4-D .*got 3-D",
    ),
    (
        "centers-empty",
        lambda b: losses.batch_get_centers(torch.rand(B, 0, H, W), backend=b),
        ValueError,
        r"^part_probs: expected a non-empty .*got shape \(2, 0, 6, 5\)",
    ),
    (
        "centers-int",
        lambda b: losses.batch_get_centers(torch.ones(B, K, H, W, **INT), backend=b),
        TypeError,
        r"^part_probs: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "centers-numpy",
        lambda b: losses.batch_get_centers(np.ones((B, K, H, W)), backend=b),
        TypeError,
        r"^part_probs: expected a torch.Tensor .*got ndarray",
    ),
    # ---- semantic_consistency_loss(features, pred, basis)
    (
        "sc-pred-3d",
        lambda b: losses.semantic_consistency_loss(r(B, C, H, W), r(4, H, W), basis(), backend=b),
        ValueError,
        r"^pred: expected a 4-D",
    ),
    (
        "sc-pred-1ch",
        lambda b: losses.semantic_consistency_loss(
            r(B, C, H, W), r(B, 1, H, W), basis(), backend=b
        ),
        ValueError,
        r"^pred: expected at least 2 channels",
    ),
    (
        "sc-features-3d",
        lambda b: losses.semantic_consistency_loss(r(C, H, W), pred(), basis(), backend=b),
        ValueError,
        r"^features: expected a 4-D tensor \(B, C, H, W\), got 3-D",
    ),
    (
        "sc-features-batch",
        lambda b: losses.semantic_consistency_loss(r(B + 1, C, H, W), pred(), basis(), backend=b),
        ValueError,
        r"^features: expected batch size 2 \(from pred\), got 3",
    ),
    (
        "sc-features-h",
        lambda b: losses.semantic_consistency_loss(r(B, C, H + 1, W), pred(), basis(), backend=b),
        ValueError,
        r"^features: expected spatial size \(H, W\) = \(6, 5\).*got \(7, 5\)",
    ),
    (
        "sc-features-w",
        lambda b: losses.semantic_consistency_loss(r(B, C, H, W - 1), pred(), basis(), backend=b),
        ValueError,
        r"^features: expected spatial size \(H, W\) = \(6, 5\).*got \(6, 4\)",
    ),
    (
        "sc-features-c0",
        lambda b: losses.semantic_consistency_loss(
            r(B, 0, H, W), pred(), torch.rand(K, 0), backend=b
        ),
        ValueError,
        r"^features: expected a non-empty .*got shape \(2, 0, 6, 5\)",
    ),
    (
        "sc-features-int",
        lambda b: losses.semantic_consistency_loss(
            torch.ones(B, C, H, W, **INT), pred(), basis(), backend=b
        ),
        TypeError,
        r"^features: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "sc-features-none",
        lambda b: losses.semantic_consistency_loss(None, pred(), basis(), backend=b),
        TypeError,
        r"^features: expected a torch.Tensor .*got NoneType",
    ),
    (
        "sc-basis-c",
        lambda b: losses.semantic_consistency_loss(
            r(B, C, H, W), pred(), torch.rand(K, C + 1), backend=b
        ),
        ValueError,
        r"^basis: expected C = 4 \(from features\), got 5",
    ),
    (
        "sc-basis-k",
        lambda b: losses.semantic_consistency_loss(
            r(B, C, H, W), pred(), torch.rand(K + 1, C), backend=b
        ),
        ValueError,
        r"^basis: expected K = 3 \(from pred's K\+1 channels\), got 4",
    ),
    (
        "sc-basis-1d",
        lambda b: losses.semantic_consistency_loss(r(B, C, H, W), pred(), torch.rand(C), backend=b),
        ValueError,
        r"^basis: expected a 2-D tensor \(K, C\), got 1-D",
    ),
    (
        "sc-basis-int",
        lambda b: losses.semantic_consistency_loss(
            r(B, C, H, W), pred(), torch.ones(K, C, **INT), backend=b
        ),
        TypeError,
        r"^basis: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "sc-basis-list",
        lambda b: losses.semantic_consistency_loss(
            r(B, C, H, W), pred(), [[1.0] * C] * K, backend=b
        ),
        TypeError,
        r"^basis: expected a torch.Tensor .*got list",
    ),
    (
        "sc-features-meta",
        lambda b: losses.semantic_consistency_loss(
            r(B, C, H, W, **META), pred(), basis(), backend=b
        ),
        ValueError,
        r"^features: expected a tensor on cpu like pred, got meta",
    ),
    (
        "sc-basis-meta",
        lambda b: losses.semantic_consistency_loss(r(B, C, H, W), pred(), basis(**META), backend=b),
        ValueError,
        r"^basis: expected a tensor on cpu like pred, got meta",
    ),
    (
        "sc-pred-meta",
        lambda b: losses.semantic_consistency_loss(r(B, C, H, W), pred(**META), basis(), backend=b),
        ValueError,
        r"^features: expected a tensor on meta like pred, got cpu",
    ),
    # ---- semantic_consistency_loss_lowres(features, pred, basis, saliency)
    (
        "lr-features-empty-list",
        lambda b: losses.semantic_consistency_loss_lowres([], pred(), basis(), backend=b),
        ValueError,
        r"^features: expected a tensor or a non-empty list of tensors, got \[\]",
    ),
    (
        "lr-features-dict",
        lambda b: losses.semantic_consistency_loss_lowres({"a": low()}, pred(), basis(), backend=b),
        TypeError,
        r"^features: expected a \(B, C, h, w\) tensor or a list of them, got dict",
    ),
    (
        "lr-features-numpy",
        lambda b: losses.semantic_consistency_loss_lowres(
            np.zeros((B, C, 3, 2)), pred(), basis(), backend=b
        ),
        TypeError,
        r"^features: expected a \(B, C, h, w\) tensor or a list of them, got ndarray",
    ),
    (
        "lr-features-none",
        lambda b: losses.semantic_consistency_loss_lowres(None, pred(), basis(), backend=b),
        TypeError,
        r"^features: expected .*got NoneType",
    ),
    (
        "lr-features-item-none",
        lambda b: losses.semantic_consistency_loss_lowres(
            [low(), None], pred(), torch.rand(K, 2 * C), backend=b
        ),
        TypeError,
        r"^features\[1\]: expected a torch.Tensor .*got NoneType",
    ),
    (
        "lr-features-3d",
        lambda b: losses.semantic_consistency_loss_lowres(r(C, 3, 2), pred(), basis(), backend=b),
        ValueError,
        r"^features: expected a 4-D tensor \(B, C, h, w\), got 3-D",
    ),
    (
        "lr-features-item-3d",
        lambda b: losses.semantic_consistency_loss_lowres(
            [low(), r(C, 3, 2)], pred(), torch.rand(K, 2 * C), backend=b
        ),
        ValueError,
        r"^features\[1\]: expected a 4-D tensor",
    ),
    (
        "lr-features-batch",
        lambda b: losses.semantic_consistency_loss_lowres(
            r(B + 1, C, 3, 2), pred(), basis(), backend=b
        ),
        ValueError,
        r"^features: expected batch size 2 \(from pred\), got 3",
    ),
    (
        "lr-features-item-batch",
        lambda b: losses.semantic_consistency_loss_lowres(
            [low(), r(1, C, 3, 2)], pred(), torch.rand(K, 2 * C), backend=b
        ),
        ValueError,
        r"^features\[1\]: expected batch size 2 \(from pred\), got 1",
    ),
    (
        "lr-features-zero-w",
        lambda b: losses.semantic_consistency_loss_lowres(
            r(B, C, 3, 0), pred(), basis(), backend=b
        ),
        ValueError,
        r"^features: expected a non-empty .*got shape \(2, 4, 3, 0\)",
    ),
    (
        "lr-features-int",
        lambda b: losses.semantic_consistency_loss_lowres(
            torch.ones(B, C, 3, 2, **INT), pred(), basis(), backend=b
        ),
        TypeError,
        r"^features: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "lr-features-item-complex",
        lambda b: losses.semantic_consistency_loss_lowres(
            [low(), low(dtype=torch.complex64)], pred(), torch.rand(K, 2 * C), backend=b
        ),
        TypeError,
        r"^features\[1\]: expected a floating-point tensor, got dtype torch.complex64",
    ),
    (
        "lr-basis-c",
        lambda b: losses.semantic_consistency_loss_lowres(
            [low(), low()], pred(), basis(), backend=b
        ),
        ValueError,
        r"^basis: expected C = 8 \(from the channels of features\), got 4",
    ),
    (
        "lr-basis-k",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), torch.rand(K - 1, C), backend=b
        ),
        ValueError,
        r"^basis: expected K = 3 \(from pred's K\+1 channels\), got 2",
    ),
    (
        "lr-basis-1d",
        lambda b: losses.semantic_consistency_loss_lowres(low(), pred(), torch.rand(C), backend=b),
        ValueError,
        r"^basis: expected a 2-D tensor \(K, C\), got 1-D",
    ),
    (
        "lr-saliency-w",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), torch.rand(B, H, W + 1), backend=b
        ),
        ValueError,
        r"^saliency: expected spatial size \(H, W\) = \(6, 5\).*got \(6, 6\)",
    ),
    (
        "lr-saliency-batch",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), torch.rand(B + 1, H, W), backend=b
        ),
        ValueError,
        r"^saliency: expected batch size 2 \(from pred\), got 3",
    ),
    (
        "lr-saliency-2d",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), torch.rand(H, W), backend=b
        ),
        ValueError,
        r"^saliency: expected a 3-D tensor \(B, H, W\), got 2-D",
    ),
    (
        "lr-saliency-2ch",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), torch.rand(B, 2, H, W), backend=b
        ),
        ValueError,
        r"^saliency: expected a 3-D tensor \(B, H, W\), got 4-D",
    ),
    (
        "lr-saliency-bool",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), torch.ones(B, H, W, dtype=torch.bool), backend=b
        ),
        TypeError,
        r"^saliency: expected a floating-point tensor, got dtype torch.bool",
    ),
    (
        "lr-saliency-list",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), [[1.0]], backend=b
        ),
        TypeError,
        r"^saliency: expected a torch.Tensor \(B, H, W\), got list",
    ),
    (
        "lr-saliency-meta",
        lambda b: losses.semantic_consistency_loss_lowres(
            low(), pred(), basis(), torch.rand(B, H, W, **META), backend=b
        ),
        ValueError,
        r"^saliency: expected a tensor on cpu like pred, got meta",
    ),
    (
        "lr-features-item-meta",
        lambda b: losses.semantic_consistency_loss_lowres(
            [low(), low(**META)], pred(), torch.rand(K, 2 * C), backend=b
        ),
        ValueError,
        r"^features\[1\]: expected a tensor on cpu like pred, got meta",
    ),
    (
        "lr-basis-meta",
        lambda b: losses.semantic_consistency_loss_lowres(low(), pred(), basis(**META), backend=b),
        ValueError,
        r"^basis: expected a tensor on cpu like pred, got meta",
    ),
    # ---- equivariance_losses(pred, pred_tps, source_points)
    (
        "eq-pred-3d",
        lambda b: losses.equivariance_losses(r(4, H, W), pred(), pts(), backend=b),
        ValueError,
        r"^pred: expected a 4-D",
    ),
    (
        "eq-pred-tps-1ch",
        lambda b: losses.equivariance_losses(pred(), r(B, 1, H, W), pts(), backend=b),
        ValueError,
        r"^pred_tps: expected at least 2 channels",
    ),
    (
        "eq-pred-tps-h",
        lambda b: losses.equivariance_losses(pred(), r(B, K + 1, H + 1, W), pts(), backend=b),
        ValueError,
        r"^pred_tps: expected the shape of pred \(2, 4, 6, 5\), got \(2, 4, 7, 5\)",
    ),
    (
        "eq-pred-tps-k",
        lambda b: losses.equivariance_losses(pred(), r(B, K, H, W), pts(), backend=b),
        ValueError,
        r"^pred_tps: expected the shape of pred \(2, 4, 6, 5\), got \(2, 3, 6, 5\)",
    ),
    (
        "eq-pred-tps-batch",
        lambda b: losses.equivariance_losses(pred(), r(B + 1, K + 1, H, W), pts(), backend=b),
        ValueError,
        r"^pred_tps: expected the shape of pred .*got \(3, 4, 6, 5\)",
    ),
    (
        "eq-pred-tps-int",
        lambda b: losses.equivariance_losses(
            pred(), torch.ones(B, K + 1, H, W, **INT), pts(), backend=b
        ),
        TypeError,
        r"^pred_tps: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "eq-pred-tps-none",
        lambda b: losses.equivariance_losses(pred(), None, pts(), backend=b),
        TypeError,
        r"^pred_tps: expected a torch.Tensor .*got NoneType",
    ),
    (
        "eq-points-16",
        lambda b: losses.equivariance_losses(pred(), pred(), torch.rand(B, 16, 2), backend=b),
        ValueError,
        r"^source_points: expected shape \(B, 25, 2\), got \(2, 16, 2\)",
    ),
    (
        "eq-points-xyz",
        lambda b: losses.equivariance_losses(pred(), pred(), torch.rand(B, 25, 3), backend=b),
        ValueError,
        r"^source_points: expected shape \(B, 25, 2\), got \(2, 25, 3\)",
    ),
    (
        "eq-points-2d",
        lambda b: losses.equivariance_losses(pred(), pred(), torch.rand(25, 2), backend=b),
        ValueError,
        r"^source_points: expected a 3-D tensor \(B, 25, 2\), got 2-D",
    ),
    (
        "eq-points-batch",
        lambda b: losses.equivariance_losses(pred(), pred(), pts(B + 1), backend=b),
        ValueError,
        r"^source_points: expected batch size 2 .*got 3",
    ),
    (
        "eq-points-empty",
        lambda b: losses.equivariance_losses(pred(), pred(), pts(0), backend=b),
        ValueError,
        r"^source_points: expected a non-empty .*got shape \(0, 25, 2\)",
    ),
    (
        "eq-points-int",
        lambda b: losses.equivariance_losses(
            pred(), pred(), torch.ones(B, 25, 2, dtype=torch.int32), backend=b
        ),
        TypeError,
        r"^source_points: expected a floating-point tensor, got dtype torch.int32",
    ),
    (
        "eq-points-complex",
        lambda b: losses.equivariance_losses(
            pred(), pred(), pts(dtype=torch.complex128), backend=b
        ),
        TypeError,
        r"^source_points: expected a floating-point tensor, got dtype torch.complex128",
    ),
    (
        "eq-points-numpy",
        lambda b: losses.equivariance_losses(pred(), pred(), np.zeros((B, 25, 2)), backend=b),
        TypeError,
        r"^source_points: expected a torch.Tensor .*got ndarray",
    ),
    (
        "eq-padding-reflect",
        lambda b: losses.equivariance_losses(
            pred(), pred(), pts(), padding_mode="reflection", backend=b
        ),
        ValueError,
        r"^padding_mode: expected one of \['zeros', 'border'\], got 'reflection'",
    ),
    (
        "eq-padding-none",
        lambda b: losses.equivariance_losses(pred(), pred(), pts(), padding_mode=None, backend=b),
        ValueError,
        r"^padding_mode: expected one of \['zeros', 'border'\], got None",
    ),
    (
        "eq-pred-tps-meta",
        lambda b: losses.equivariance_losses(pred(), pred(**META), pts(), backend=b),
        ValueError,
        r"^pred_tps: expected a tensor on cpu like pred, got meta",
    ),
    (
        "eq-points-meta",
        lambda b: losses.equivariance_losses(pred(), pred(), pts(**META), backend=b),
        ValueError,
        r"^source_points: expected a tensor on cpu like pred, got meta",
    ),
    # ---- tps_warp(x, source_points)
    (
        "warp-3d",
        lambda b: tps.tps_warp(r(C, H, W), pts(), backend=b),
        ValueError,
        r"^x: expected a 4-D tensor \(B, C, H, W\), got 3-D",
    ),
    (
        "warp-empty",
        lambda b: tps.tps_warp(r(B, 0, H, W), pts(), backend=b),
        ValueError,
        r"^x: expected a non-empty .*got shape \(2, 0, 6, 5\)",
    ),
    (
        "warp-zero-h",
        lambda b: tps.tps_warp(r(B, C, 0, W), pts(), backend=b),
        ValueError,
        r"^x: expected a non-empty .*got shape \(2, 4, 0, 5\)",
    ),
    (
        "warp-uint8",
        lambda b: tps.tps_warp(torch.ones(B, C, H, W, dtype=torch.uint8), pts(), backend=b),
        TypeError,
        r"^x: expected a floating-point tensor, got dtype torch.uint8",
    ),
    (
        "warp-list",
        lambda b: tps.tps_warp([[0.0]], pts(), backend=b),
        TypeError,
        r"^x: expected a torch.Tensor .*got list",
    ),
    (
        "warp-points-shape",
        lambda b: tps.tps_warp(r(B, C, H, W), torch.rand(B, 25), backend=b),
        ValueError,
        r"^source_points: expected a 3-D tensor \(B, 25, 2\), got 2-D",
    ),
    (
        "warp-points-batch",
        lambda b: tps.tps_warp(r(B, C, H, W), pts(1), backend=b),
        ValueError,
        r"^source_points: expected batch size 2 .*got 1",
    ),
    (
        "warp-points-none",
        lambda b: tps.tps_warp(r(B, C, H, W), None, backend=b),
        TypeError,
        r"^source_points: expected a torch.Tensor .*got NoneType",
    ),
    (
        "warp-padding",
        lambda b: tps.tps_warp(r(B, C, H, W), pts(), padding_mode="reflect", backend=b),
        ValueError,
        r"^padding_mode: expected one of .*got 'reflect'",
    ),
    (
        "warp-points-meta",
        lambda b: tps.tps_warp(r(B, C, H, W), pts(**META), backend=b),
        ValueError,
        r"^source_points: expected a tensor on cpu like x, got meta",
    ),
]


def _error_of(call, backend):
    with pytest.raises((ValueError, TypeError)) as info:
        call(backend)
    return type(info.value), str(info.value)


@pytest.mark.parametrize(
    "call, error, pattern", [c[1:] for c in BACKEND_CASES], ids=[c[0] for c in BACKEND_CASES]
)
def test_every_backend_rejects_bad_input_with_the_same_error(call, error, pattern):
    usable = scops_fast_usable()
    # Every name, usable here or not: validation happens before the backend is chosen.
    results = {name: _error_of(call, name) for name in (None, *_dispatch.CHOICES)}
    first = results[None]
    assert first[0] is error, first
    assert re.search(pattern, first[1]), first[1]
    for name, got in results.items():
        assert got == first, (name, got, first)
    assert "reference" in usable  # the parametrisation above covered a usable backend


def scops_fast_usable():
    import scops_fast

    return scops_fast.available_backends()


@pytest.mark.parametrize("backend", ["fortran", "", "CPP", 3, ("cpp",)])
def test_unknown_backend_name_is_a_value_error_for_every_function(backend):
    good = [
        lambda: losses.concentration_loss(pred(), backend=backend),
        lambda: losses.batch_get_centers(torch.rand(B, K, H, W), backend=backend),
        lambda: losses.semantic_consistency_loss(r(B, C, H, W), pred(), basis(), backend=backend),
        lambda: losses.semantic_consistency_loss_lowres(
            [low(), low()], pred(), torch.rand(K, 2 * C), torch.rand(B, H, W), backend=backend
        ),
        lambda: losses.equivariance_losses(pred(), pred(), pts(), backend=backend),
        lambda: tps.tps_warp(r(B, C, H, W), pts(), backend=backend),
    ]
    for call in good:
        with pytest.raises(ValueError, match=r"^backend: expected one of \['auto', .*got"):
            call()


@pytest.mark.parametrize("backend", [None, *_dispatch.CHOICES])
def test_valid_edge_shapes_are_accepted(backend):
    """One-pixel images, K = 1, B = 1, a (B, 1, H, W) saliency: not errors."""
    import scops_fast

    name = backend if backend not in (None, "auto") else "reference"
    if name not in scops_fast.available_backends():
        pytest.skip(f"{name} is not usable here")
    for h, w in [(1, 1), (1, 7), (7, 1)]:
        p = r(1, 2, h, w)
        losses.concentration_loss(p, backend=backend)
        losses.batch_get_centers(torch.rand(1, 1, h, w), backend=backend)
        losses.semantic_consistency_loss(r(1, 3, h, w), p, torch.rand(1, 3), backend=backend)
        losses.semantic_consistency_loss_lowres(
            r(1, 3, 2, 2), p, torch.rand(1, 3), torch.rand(1, 1, h, w), backend=backend
        )
        losses.equivariance_losses(p, p, pts(1), backend=backend)
        tps.tps_warp(p, pts(1), padding_mode="border", backend=backend)


# --------------------------------------------------------------------------- no backend=
def _tiny_net():
    return build_network(tiny_config().model).eval()


OTHER_CASES = [
    # ---- orthonormal_loss
    (
        "orth-1d",
        lambda: losses.orthonormal_loss(torch.rand(C)),
        ValueError,
        r"^w: expected a 2-D tensor \(K, C\), got 1-D",
    ),
    (
        "orth-3d",
        lambda: losses.orthonomal_loss(torch.rand(1, K, C)),
        ValueError,
        r"^w: expected a 2-D tensor \(K, C\), got 3-D",
    ),
    (
        "orth-empty",
        lambda: losses.orthonormal_loss(torch.rand(0, C)),
        ValueError,
        r"^w: expected a non-empty .*got shape \(0, 4\)",
    ),
    (
        "orth-int",
        lambda: losses.orthonormal_loss(torch.ones(K, C, **INT)),
        TypeError,
        r"^w: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "orth-complex",
        lambda: losses.orthonormal_loss(torch.ones(K, C, dtype=torch.complex64)),
        TypeError,
        r"^w: expected a floating-point tensor, got dtype torch.complex64",
    ),
    (
        "orth-list",
        lambda: losses.orthonormal_loss([[1.0, 0.0]]),
        TypeError,
        r"^w: expected a torch.Tensor \(K, C\), got list",
    ),
    # ---- tps_grid(source_points, height, width)
    (
        "grid-points",
        lambda: tps.tps_grid(torch.rand(B, 24, 2), H, W),
        ValueError,
        r"^source_points: expected shape \(B, 25, 2\), got \(2, 24, 2\)",
    ),
    (
        "grid-points-int",
        lambda: tps.tps_grid(torch.ones(B, 25, 2, **INT), H, W),
        TypeError,
        r"^source_points: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "grid-points-empty",
        lambda: tps.tps_grid(pts(0), H, W),
        ValueError,
        r"^source_points: expected a non-empty",
    ),
    (
        "grid-height-0",
        lambda: tps.tps_grid(pts(), 0, W),
        ValueError,
        r"^height: expected a positive size, got 0",
    ),
    (
        "grid-width-neg",
        lambda: tps.tps_grid(pts(), H, -3),
        ValueError,
        r"^width: expected a positive size, got -3",
    ),
    (
        "grid-height-float",
        lambda: tps.tps_grid(pts(), 4.0, W),
        TypeError,
        r"^height: expected an int, got float",
    ),
    (
        "grid-width-bool",
        lambda: tps.tps_grid(pts(), H, True),
        TypeError,
        r"^width: expected an int, got bool",
    ),
    (
        "grid-width-none",
        lambda: tps.tps_grid(pts(), H, None),
        TypeError,
        r"^width: expected an int, got NoneType",
    ),
    # ---- RandTPS
    (
        "randtps-width-0",
        lambda: tps.RandTPS(0, H),
        ValueError,
        r"^width: expected a positive size, got 0",
    ),
    (
        "randtps-height-str",
        lambda: tps.RandTPS(W, "6"),
        TypeError,
        r"^height: expected an int, got str",
    ),
    (
        "randtps-batch-0",
        lambda: tps.RandTPS(W, H, batch_size=0),
        ValueError,
        r"^batch_size: expected a positive size, got 0",
    ),
    (
        "randtps-mode",
        lambda: tps.RandTPS(W, H, mode="perspective"),
        ValueError,
        r"^mode: expected one of \['affine', 'projective'\], got 'perspective'",
    ),
    (
        "randtps-scale-order",
        lambda: tps.RandTPS(W, H, random_scale=(2.0, 1.0)),
        ValueError,
        r"^random_scale: expected .*0 < low <= high, got \(2.0, 1.0\)",
    ),
    (
        "randtps-scale-zero",
        lambda: tps.RandTPS(W, H, random_scale=(0.0, 1.0)),
        ValueError,
        r"^random_scale: expected .*0 < low <= high, got",
    ),
    (
        "randtps-scale-scalar",
        lambda: tps.RandTPS(W, H, random_scale=1.5),
        TypeError,
        r"^random_scale: expected None or \(low, high\).*got float",
    ),
    (
        "randtps-scale-three",
        lambda: tps.RandTPS(W, H, random_scale=(0.5, 1.0, 2.0)),
        ValueError,
        r"^random_scale: expected None or \(low, high\).*got 3 values",
    ),
    (
        "randtps-scale-nan",
        lambda: tps.RandTPS(W, H, random_scale=(0.5, float("nan"))),
        ValueError,
        r"^random_scale\[1\]: expected a finite number, got nan",
    ),
    (
        "randtps-sigma-neg",
        lambda: tps.RandTPS(W, H, sigma=-0.1),
        ValueError,
        r"^sigma: expected a number >= 0.0, got -0.1",
    ),
    (
        "randtps-sigma-inf",
        lambda: tps.RandTPS(W, H, sigma=float("inf")),
        ValueError,
        r"^sigma: expected a finite number, got inf",
    ),
    (
        "randtps-sigma-str",
        lambda: tps.RandTPS(W, H, sigma="0.01"),
        TypeError,
        r"^sigma: expected a number, got str",
    ),
    (
        "randtps-generator",
        lambda: tps.RandTPS(W, H, generator=0),
        TypeError,
        r"^generator: expected a CPU torch.Generator or None, got int",
    ),
    (
        "randtps-x-list",
        lambda: tps.RandTPS(W, H, batch_size=B)([[0.0]]),
        TypeError,
        r"^x: expected a torch.Tensor .*got list",
    ),
    (
        "randtps-x-batch",
        lambda: tps.RandTPS(W, H, batch_size=B)(r(B + 1, C, H, W)),
        ValueError,
        r"^x: expected batch size 2 \(from RandTPS's batch_size\), got 3",
    ),
    (
        "randtps-x-int",
        lambda: tps.RandTPS(W, H, batch_size=B)(torch.ones(B, C, H, W, **INT)),
        TypeError,
        r"^x: expected a floating-point tensor, got dtype torch.int64",
    ),
    (
        "randtps-padding",
        lambda: tps.RandTPS(W, H, batch_size=B)(r(B, C, H, W), "reflect"),
        ValueError,
        r"^padding_mode: expected one of .*got 'reflect'",
    ),
    # ---- predict_parts(model, images)
    (
        "predict-model-none",
        lambda: predict_parts(None, torch.rand(B, 3, 8, 8)),
        TypeError,
        r"^model: expected a segmentation network .*got NoneType",
    ),
    (
        "predict-model-linear",
        lambda: predict_parts(torch.nn.Linear(2, 2), torch.rand(B, 3, 8, 8)),
        TypeError,
        r"^model: expected a segmentation network .*got Linear",
    ),
    (
        "predict-images-list",
        lambda: predict_parts(_tiny_net(), [[0.0]]),
        TypeError,
        r"^images: expected a torch.Tensor \(B, 3, H, W\), got list",
    ),
    (
        "predict-images-numpy",
        lambda: predict_parts(_tiny_net(), np.zeros((B, 3, 8, 8))),
        TypeError,
        r"^images: expected a torch.Tensor \(B, 3, H, W\), got ndarray",
    ),
    (
        "predict-images-uint8",
        lambda: predict_parts(_tiny_net(), torch.ones(B, 3, 8, 8).byte()),
        TypeError,
        r"^images: expected a floating-point tensor .*got dtype torch.uint8 \(divide",
    ),
    (
        "predict-images-bool",
        lambda: predict_parts(_tiny_net(), torch.ones(B, 3, 8, 8).bool()),
        TypeError,
        r"^images: expected a floating-point tensor .*got dtype torch.bool",
    ),
    (
        "predict-images-3d",
        lambda: predict_parts(_tiny_net(), torch.rand(3, 8, 8)),
        ValueError,
        r"^images: expected \(B, 3, H, W\), got \(3, 8, 8\)",
    ),
    (
        "predict-images-1ch",
        lambda: predict_parts(_tiny_net(), torch.rand(B, 1, 8, 8)),
        ValueError,
        r"^images: expected \(B, 3, H, W\), got \(2, 1, 8, 8\)",
    ),
    (
        "predict-images-empty",
        lambda: predict_parts(_tiny_net(), torch.rand(0, 3, 8, 8)),
        ValueError,
        r"^images: expected a non-empty \(B, 3, H, W\) tensor, got \(0, 3, 8, 8\)",
    ),
    (
        "predict-images-zero-w",
        lambda: predict_parts(_tiny_net(), torch.rand(B, 3, 8, 0)),
        ValueError,
        r"^images: expected a non-empty \(B, 3, H, W\) tensor, got \(2, 3, 8, 0\)",
    ),
    (
        "predict-images-meta",
        lambda: predict_parts(_tiny_net(), torch.rand(B, 3, 8, 8, **META)),
        ValueError,
        r"^images: expected a tensor with data \(the model is on cpu\), got a meta",
    ),
]


def _lm(n=6, k=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, k, 2))


def _lm_call(**changes):
    args = {
        "train_pred": _lm(),
        "train_gt": _lm(k=2, seed=1),
        "test_pred": _lm(4, seed=2),
        "test_gt": _lm(4, 2, seed=3),
    }
    args.update(changes)
    return lambda: landmark_regression_error(**args)


LANDMARK_CASES = [
    (
        "lm-none",
        _lm_call(train_pred=None),
        TypeError,
        r"^train_pred: expected an array or tensor \(N, points, 2\), got NoneType",
    ),
    (
        "lm-str",
        _lm_call(test_gt="abc"),
        TypeError,
        r"^test_gt: expected an array or tensor \(N, points, 2\), got str",
    ),
    (
        "lm-ragged-list",
        _lm_call(test_pred=[[[0.0, 1.0]], [[1.0]]]),
        TypeError,
        r"^test_pred: expected numbers \(N, points, 2\), got a list that is not",
    ),
    (
        "lm-2d",
        _lm_call(train_pred=_lm().reshape(6, 6)),
        ValueError,
        r"^train_pred: expected shape \(N, points, 2\), got shape \(6, 6\)",
    ),
    (
        "lm-xyz",
        _lm_call(test_gt=np.zeros((4, 2, 3))),
        ValueError,
        r"^test_gt: expected shape \(N, points, 2\), got shape \(4, 2, 3\)",
    ),
    (
        "lm-bool",
        _lm_call(train_pred=_lm() > 0),
        TypeError,
        r"^train_pred: expected floating-point values .*got dtype bool",
    ),
    (
        "lm-int",
        _lm_call(train_gt=np.ones((6, 2, 2), dtype=np.int64)),
        TypeError,
        r"^train_gt: expected floating-point values .*got dtype int64",
    ),
    (
        "lm-complex",
        _lm_call(test_pred=_lm(4) + 1j),
        TypeError,
        r"^test_pred: expected floating-point values .*got dtype complex128",
    ),
    (
        "lm-tensor-int",
        _lm_call(test_gt=torch.ones(4, 2, 2, dtype=torch.int32)),
        TypeError,
        r"^test_gt: expected floating-point values .*got dtype torch.int32",
    ),
    (
        "lm-meta",
        _lm_call(test_pred=torch.rand(4, 3, 2, **META)),
        ValueError,
        r"^test_pred: expected a tensor with data .*got a meta tensor",
    ),
    (
        "lm-train-empty",
        _lm_call(train_pred=np.zeros((0, 3, 2)), train_gt=np.zeros((0, 2, 2))),
        ValueError,
        r"^train_pred: expected at least one image and one point, got shape \(0, 3, 2\)",
    ),
    (
        "lm-test-empty",
        _lm_call(test_pred=np.zeros((0, 3, 2)), test_gt=np.zeros((0, 2, 2))),
        ValueError,
        r"^test_gt: expected at least one image and one point, got shape \(0, 2, 2\)",
    ),
    (
        "lm-no-points",
        _lm_call(train_pred=np.zeros((6, 0, 2))),
        ValueError,
        r"^train_pred: expected at least one image and one point",
    ),
    (
        "lm-train-n",
        _lm_call(train_gt=_lm(5, 2)),
        ValueError,
        r"^train_gt: expected 6 images \(as train_pred\), got 5",
    ),
    (
        "lm-test-n",
        _lm_call(test_gt=_lm(1, 2)),
        ValueError,
        r"^test_gt: expected 4 images \(as test_pred\), got 1",
    ),
    (
        "lm-l-mismatch",
        _lm_call(test_gt=_lm(4, 5)),
        ValueError,
        r"^test_gt: expected 2 landmarks per image \(as train_gt\), got 5",
    ),
    (
        "lm-k-mismatch",
        _lm_call(test_pred=_lm(4, 4)),
        ValueError,
        r"^test_pred: expected 3 points per image \(as train_pred\), got 4",
    ),
    (
        "lm-nan-pred",
        _lm_call(test_pred=np.full((4, 3, 2), np.nan)),
        ValueError,
        r"^test_pred: expected finite values .*got NaN or inf",
    ),
    (
        "lm-inf-gt",
        _lm_call(test_gt=np.full((4, 2, 2), np.inf)),
        ValueError,
        r"^test_gt: expected finite values, got NaN or inf",
    ),
]

LANDMARK_NORMALIZER_CASES = [
    (
        "lm-normalizer-name",
        "bbox",
        ValueError,
        r"^normalizer: expected \"iod\" or \(train_scales, test_scales\), got 'bbox'",
    ),
    ("lm-normalizer-none", None, ValueError, r"^normalizer: expected \"iod\" or a pair.*NoneType"),
    (
        "lm-normalizer-count",
        (np.ones(6), np.ones(3)),
        ValueError,
        r"^normalizer\[1\] \(test scales\): expected 4 values, got 3",
    ),
    (
        "lm-normalizer-nan",
        (np.ones(6), np.full(4, np.nan)),
        ValueError,
        r"^normalizer\[1\] \(test scales\): expected finite, non-negative scales",
    ),
    (
        "lm-normalizer-neg",
        (-np.ones(6), np.ones(4)),
        ValueError,
        r"^normalizer\[0\] \(train scales\): expected finite, non-negative scales",
    ),
    (
        "lm-normalizer-str",
        ("a", np.ones(4)),
        TypeError,
        r"^normalizer\[0\] \(train scales\): expected an array or tensor",
    ),
]
for _id, _norm, _err, _pat in LANDMARK_NORMALIZER_CASES:
    LANDMARK_CASES.append((_id, _lm_call(normalizer=_norm), _err, _pat))

ALL_OTHER = OTHER_CASES + LANDMARK_CASES


@pytest.mark.parametrize(
    "call, error, pattern", [c[1:] for c in ALL_OTHER], ids=[c[0] for c in ALL_OTHER]
)
def test_bad_input_names_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_integer_like_sizes_and_numbers_are_accepted():
    grid = tps.tps_grid(pts(), np.int64(H), torch.tensor(W))
    assert grid.shape == (B, H, W, 2)
    warp = tps.RandTPS(np.int32(W), H, batch_size=B, sigma=np.float32(0.02), random_scale=[1, 2])
    assert warp.random_scale == (1.0, 2.0)
    assert warp(r(B, C, H, W)).shape == (B, C, H, W)


def test_landmarks_accept_lists_float_arrays_and_tensors():
    args = (_lm(), _lm(k=2, seed=1), _lm(4, seed=2), _lm(4, 2, seed=3))
    expected = landmark_regression_error(*args)
    as_lists = landmark_regression_error(*(a.tolist() for a in args))
    as_tensors = landmark_regression_error(*(torch.from_numpy(a).float() for a in args))
    assert as_lists == expected
    assert as_tensors == pytest.approx(expected, rel=1e-5)
