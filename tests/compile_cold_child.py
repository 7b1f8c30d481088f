"""Run as `python compile_cold_child.py BACKEND FIRST`: the first thing this process does is
torch.compile(fullgraph=True) (Inductor) over every public loss and tps_warp, forward and
backward, with `backend=BACKEND` ("None" for the default), starting with op FIRST; prints one
line per op, `op ok <max error against eager, relative to each tensor's largest entry>`."""

import sys

import torch

from scops_fast import losses, tps


def cases(backend):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 12, 10, generator=g)
    pred_tps = torch.randn(2, 4, 12, 10, generator=g)
    feats = torch.randn(2, 6, 12, 10, generator=g)
    low = torch.randn(2, 6, 4, 3, generator=g)
    basis = torch.rand(3, 6, generator=g)
    points = tps.TARGET_POINTS.expand(2, -1, -1) + 0.05 * torch.randn(2, 25, 2, generator=g)
    sal = torch.rand(2, 12, 10, generator=g)
    kw = {"backend": backend}
    return {
        "concentration_loss": ((pred,), lambda p: losses.concentration_loss(p, **kw)),
        "batch_get_centers": (
            (pred,),
            lambda p: losses.batch_get_centers(p.softmax(1)[:, 1:], **kw).sum(),
        ),
        "semantic_consistency_loss": (
            (pred, basis),
            lambda p, w: losses.semantic_consistency_loss(feats, p, w, **kw),
        ),
        "semantic_consistency_loss_lowres": (
            (pred, basis),
            lambda p, w: losses.semantic_consistency_loss_lowres(low, p, w, sal, **kw),
        ),
        "orthonormal_loss": ((basis,), lambda w: losses.orthonormal_loss(w)),
        "equivariance_losses": (
            (pred, pred_tps),
            lambda p, q: sum(losses.equivariance_losses(p, q, points, **kw)),
        ),
        "tps_warp": ((pred,), lambda p: tps.tps_warp(p, points, **kw).square().sum()),
    }


def main():
    backend = None if sys.argv[1] == "None" else sys.argv[1]
    table = cases(backend)
    first = sys.argv[2]
    for name in [first, *[n for n in table if n != first]]:
        inputs, fn = table[name]
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        out = torch.compile(fn, fullgraph=True)(*leaves)
        out.backward()
        grads = [x.grad for x in leaves]
        eager_leaves = [x.clone().requires_grad_(True) for x in inputs]
        expected = fn(*eager_leaves)
        expected.backward()
        pairs = [(out.detach(), expected.detach())]
        pairs += [(a, b.grad) for a, b in zip(grads, eager_leaves, strict=True)]
        # Relative to each tensor's largest entry: Inductor fuses and reorders the sums.
        err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in pairs)
        print(f"{name} ok {err:.3g}", flush=True)


if __name__ == "__main__":
    main()
