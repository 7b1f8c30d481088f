"""Which precision the losses take under mixed-precision training (`precision`: bfloat16,
float16): each loss and its gradient from logits (and features) given in the low precision
against the same values cast to float32 first, both scored against float64.

    python benchmarks/loss_precision.py [--backend cpp] [--size 256] [--batch 6]

The inputs are realistic for a trained network: logits of a clear segmentation (the
synthetic data set's parts, margin 6 and noise), at the network's output stride 8, the
features and saliency of the same images, a random warp. Two errors per loss:

- `vs exact`: against the float64 loss of the low-precision values themselves: the
  kernel's own error, what feeding it the low precision costs;
- `vs float64 input`: against the float64 loss of the float64 logits: that plus the cost
  of the network's output being rounded at all, which no loss precision recovers.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from scops_fast import losses
from scops_fast.data.synthetic import SyntheticParts
from scops_fast.models import build_features
from scops_fast.tps import RandTPS, tps_warp


def inputs(size: int, batch: int, seed: int = 0) -> dict:
    """float64 logits (low resolution), warped logits, features, saliency, basis, points."""
    data = SyntheticParts(n=batch, size=size, seed=seed)
    parts = data.num_parts
    items = [data[i] for i in range(batch)]
    images = torch.stack([it["img"] for it in items]).double()
    labels = torch.stack([torch.as_tensor(it["parts"]) for it in items])
    gen = torch.Generator().manual_seed(seed)
    low = size // 8
    onehot = F.one_hot(labels.long().clamp(max=parts), parts + 1).permute(0, 3, 1, 2).double()
    onehot = F.interpolate(onehot, size=(low, low), mode="area")
    logits = 6.0 * onehot + torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
    tps = RandTPS(size, size, batch_size=batch, random_scale=(0.7, 2.0), generator=gen)
    tps.reset_control_points()
    points = tps.source_control_points.double()
    warped = tps_warp(F.interpolate(logits, size=(size, size), mode="bilinear"), points)
    warped = F.interpolate(warped, size=(low, low), mode="area")
    warped = warped + 0.3 * torch.randn(warped.shape, generator=gen, dtype=torch.float64)
    feats = build_features("lowlevel", stride=4).double()(images)
    feats = [F.normalize(f, dim=1) for f in feats]
    basis = F.normalize(torch.rand(parts, feats[0].shape[1], generator=gen).double(), dim=1)
    saliency = torch.stack([torch.as_tensor(it["fg"]).double() for it in items])
    return {
        "logits": logits,
        "warped": warped,
        "feats": feats,
        "basis": basis,
        "saliency": saliency,
        "points": points,
    }


def up(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


def evaluate(x: dict, loss_dtype, size: int, backend) -> dict:
    """{loss: (value, gradient wrt the low-resolution logits)} with the losses fed `loss_dtype`."""
    out = {}
    logits = x["logits"].to(loss_dtype).requires_grad_(True)
    warped = x["warped"].to(loss_dtype).requires_grad_(True)
    pred, pred_warped = up(logits, size), up(warped, size)
    con = losses.concentration_loss(pred, backend=backend)
    eqv, lmeqv = losses.equivariance_losses(pred, pred_warped, x["points"], backend=backend)
    feats = [f.to(loss_dtype) for f in x["feats"]]
    sem = losses.semantic_consistency_loss_lowres(
        feats, pred, x["basis"].to(loss_dtype), x["saliency"].to(loss_dtype), backend=backend
    )
    for name, value in (("concentration", con), ("equivariance", eqv)):
        out[name] = value
    out["landmark_equivariance"], out["semantic"] = lmeqv, sem
    result = {}
    for name, value in out.items():
        grads = torch.autograd.grad(value, (logits, warped), retain_graph=True, allow_unused=True)
        grad = torch.cat([g.double().reshape(-1) for g in grads if g is not None])
        result[name] = (value.double().item(), grad, value.dtype)
    return result


def rounded(x: dict, dtype) -> dict:
    """The inputs as the network in `dtype` gives them: logits and features rounded."""
    out = dict(x)
    for key in ("logits", "warped"):
        out[key] = x[key].to(dtype).double()
    out["feats"] = [f.to(dtype).double() for f in x["feats"]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=6)
    args = p.parse_args()
    torch.manual_seed(0)
    x = inputs(args.size, args.batch)
    exact = evaluate(x, torch.float64, args.size, args.backend)
    k = x["basis"].shape[0]
    print(f"{args.batch}x{args.size}x{args.size}, K={k}, backend {args.backend or 'auto'}")
    print(
        "| loss | input | fed to the loss as | value dtype | value vs exact | "
        "gradient vs exact | value vs float64 input | gradient vs float64 input |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    for low in (torch.bfloat16, torch.float16, torch.float32):
        q = rounded(x, low)
        exact_q = evaluate(q, torch.float64, args.size, args.backend)
        feeds = (low, torch.float32) if low != torch.float32 else (torch.float32,)
        for feed in feeds:
            got = evaluate(q, feed, args.size, args.backend)
            for name, (value, grad, dtype) in got.items():
                errors = [
                    f"{rel(value, ref[name][0]):.1e} | {rel(grad, ref[name][1]):.1e}"
                    for ref in (exact_q, exact)
                ]
                kinds = " | ".join(str(t).removeprefix("torch.") for t in (low, feed, dtype))
                print(f"| {name} | {kinds} | {' | '.join(errors)} |")


def rel(a, b) -> float:
    if torch.is_tensor(a):
        return float((a - b).norm() / b.norm())
    return abs(a - b) / abs(b)


if __name__ == "__main__":
    main()
