"""Helpers shared by the tests of the compiled backends (cpp, triton): random inputs
in any memory layout, spline source points, a NaN-poisoning context and the
backend-vs-reference comparison of values and gradients."""

import contextlib

import torch

from scops_fast import reference

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
WARP_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def make(shape, layout, dtype, gen, scale=1.0):
    """A random leaf tensor of `shape` requiring grad, laid out contiguous, transposed
    (H and W strides swapped) or channels_last."""
    if layout == "transposed":
        b, c, h, w = shape
        t = torch.randn(b, c, w, h, generator=gen, dtype=torch.float64).transpose(2, 3)
    else:
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
    t = (scale * t).to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(True)


def source_points(b, dtype, gen):
    """Source points spread so that some samples fall outside the image."""
    pts = reference.target_points() * 1.3 + 0.15 * torch.randn(
        b, 25, 2, generator=gen, dtype=torch.float64
    )
    return pts.to(dtype)


def loss_calls(shape, gen, device="cpu"):
    """{kernel op: fn(pred, backend) -> scalar}: a public call through each fused op, for
    logits `pred` of `shape` (B, K+1, H, W); the other inputs are constants drawn here."""
    from scops_fast import losses, tps

    b, k1, h, w = shape

    def r(*s):
        return torch.randn(*s, generator=gen).to(device)

    pred_tps, low, feats = r(*shape), r(b, 6, 3, 3), r(b, 6, h, w)
    basis = torch.rand(k1 - 1, 6, generator=gen).to(device)
    pts = source_points(b, torch.float32, gen).to(device)
    return {
        "concentration": lambda p, be: losses.concentration_loss(p, backend=be),
        "softmax_moments": lambda p, be: losses.batch_get_centers(p.exp(), backend=be).sum(),
        "semantic_dense": lambda p, be: losses.semantic_consistency_loss(
            feats, p, basis, backend=be
        ),
        "semantic_lowres": lambda p, be: losses.semantic_consistency_loss_lowres(
            low, p, basis, backend=be
        ),
        "tps_warp": lambda p, be: tps.tps_warp(p, pts, backend=be).square().mean(),
        "equivariance": lambda p, be: sum(losses.equivariance_losses(p, pred_tps, pts, backend=be)),
    }


@contextlib.contextmanager
def poisoned_allocations(device: str = "cpu"):
    """Fill every uninitialised allocation (kernel outputs and partial-sum slots
    included) with NaN, so an element a kernel forgets to write shows up as a mismatch.

    On CUDA, deterministic mode only warns: torch's own grid_sample backward (the
    reference's warp) has no deterministic CUDA kernel and would raise. The NaN fill,
    which is what this is for, applies either way."""
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.utils.deterministic.fill_uninitialized_memory = old[2]


def gradcheck_cases(backend, gen, device="cpu"):
    """(function, float64 inputs) pairs covering every op of `backend` for gradcheck, on
    `device`."""
    from scops_fast import losses, tps

    def t(*shape):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return x.to(device).requires_grad_(True)

    pts = source_points(2, torch.float64, gen).to(device)
    feats = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64).to(device)
    low = torch.randn(2, 4, 3, 2, generator=gen, dtype=torch.float64).to(device)
    sal = torch.rand(2, 5, 6, generator=gen, dtype=torch.float64).to(device)
    be = backend
    return [
        (lambda p: losses.concentration_loss(p, backend=be), (t(2, 3, 5, 6),)),
        (lambda p: losses.batch_get_centers(p, backend=be), (t(2, 3, 5, 6),)),
        (lambda x: tps.tps_warp(x, pts, backend=be), (t(2, 2, 5, 6),)),
        (lambda x: tps.tps_warp(x, pts, padding_mode="border", backend=be), (t(2, 2, 5, 6),)),
        (
            lambda p, m: losses.semantic_consistency_loss(feats, p, m, backend=be),
            (t(2, 3, 5, 6), t(2, 4)),
        ),
        (
            lambda p, m: losses.semantic_consistency_loss_lowres(low, p, m, sal, backend=be),
            (t(2, 3, 5, 6), t(2, 4)),
        ),
        # The KL target is detached (SPEC section 7): check it w.r.t. pred_tps only.
        (
            lambda q: losses.equivariance_losses(feats[:, :3].detach(), q, pts, backend=be)[0],
            (t(2, 3, 5, 6),),
        ),
        (
            lambda p, q: losses.equivariance_losses(p, q, pts, backend=be)[1],
            (t(2, 3, 5, 6), t(2, 3, 5, 6)),
        ),
    ]


def run_all_ops(backend, shape, channels, low_hw, seed=5, device="cpu"):
    """Outputs and gradients of every op of `backend` on one fixed float32 input set:
    logits of `shape` (B, K+1, H, W), `channels` feature channels at full and at `low_hw`
    resolution."""
    from scops_fast import losses, tps

    gen = torch.Generator().manual_seed(seed)
    b, k1, h, w = shape

    def on(t, grad=False):
        return t.to(device).requires_grad_(grad)

    pred = on(torch.randn(*shape, generator=gen), True)
    pred_tps = on(torch.randn(*shape, generator=gen), True)
    feats = on(torch.randn(b, channels, h, w, generator=gen))
    low = on(torch.randn(b, channels, *low_hw, generator=gen))
    basis = on(torch.rand(k1 - 1, channels, generator=gen), True)
    pts = on(source_points(b, torch.float32, gen))
    outs = [
        losses.concentration_loss(pred, backend=backend),
        *losses.equivariance_losses(pred, pred_tps, pts, backend=backend),
        tps.tps_warp(pred, pts, backend=backend).square().mean(),
        losses.semantic_consistency_loss(feats, pred, basis, backend=backend),
        losses.semantic_consistency_loss_lowres(low, pred, basis, backend=backend),
    ]
    results = []
    for out in outs:
        grads = torch.autograd.grad(
            out, (pred, pred_tps, basis), allow_unused=True, retain_graph=True
        )
        results.append((out.detach(), [g for g in grads if g is not None]))
    return results


def assert_bitwise_equal(a, b):
    for (va, ga), (vb, gb) in zip(a, b, strict=True):
        assert torch.equal(va, vb)
        for x, y in zip(ga, gb, strict=True):
            assert torch.equal(x, y)


def lowres_case(b, k, h, w, dtype, gen, saliency):
    """Low-resolution features for a (b, k+1, h, w) prediction: two maps of one size and
    one of another, one of them non-contiguous; an optional saliency; a (k, 10) basis."""
    low = [
        torch.randn(b, 3, 4, 5, generator=gen, dtype=torch.float64).to(dtype),
        torch.randn(b, 5, 4, 2, generator=gen, dtype=torch.float64).to(dtype).transpose(2, 3),
        torch.randn(b, 2, 4, 5, generator=gen, dtype=torch.float64).to(dtype),
    ]
    sal = torch.rand(b, h, w, generator=gen, dtype=torch.float64).to(dtype) if saliency else None
    basis = torch.rand(k, 10, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    return low, sal, basis
