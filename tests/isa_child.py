"""Run as `python isa_child.py OUT.npz` (with SCOPS_FAST_CPU_CAPABILITY set by the caller):
the cpp backend's values and gradients on fixed inputs, and which build ran."""

import sys

import numpy as np
import torch

import scops_fast
from scops_fast import losses, tps


def main(out):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 9, 37, 41, generator=g, requires_grad=True)
    pred_tps = torch.randn(3, 9, 37, 41, generator=g, requires_grad=True)
    low = torch.randn(3, 16, 5, 6, generator=g)
    basis = torch.rand(8, 16, generator=g, requires_grad=True)
    sal = torch.rand(3, 37, 41, generator=g)
    points = tps.TARGET_POINTS.expand(3, -1, -1) + 0.05 * torch.randn(3, 25, 2, generator=g)
    results = {}
    terms = {
        "concentration": losses.concentration_loss(pred, backend="cpp"),
        "centres": losses.batch_get_centers(pred.softmax(1)[:, 1:], backend="cpp").square().sum(),
        "equivariance": sum(losses.equivariance_losses(pred, pred_tps, points, backend="cpp")),
        "semantic": losses.semantic_consistency_loss_lowres(low, pred, basis, sal, backend="cpp"),
        "warp": tps.tps_warp(pred, points, backend="cpp").square().sum(),
    }
    for name, value in terms.items():
        grads = torch.autograd.grad(value, [pred, pred_tps, basis], allow_unused=True)
        results[f"{name}.value"] = value.detach().numpy()
        for i, grad in enumerate(grads):
            if grad is not None:
                results[f"{name}.grad{i}"] = grad.numpy()
    results["build"] = np.array(scops_fast.available_backends().details["cpp"])
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
