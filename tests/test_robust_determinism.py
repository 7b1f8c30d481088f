"""Backend "cpp" is bitwise repeatable: every op, forward and backward, float32 and
float64, across repeated calls, thread counts (1, 2, 3, 4) and processes. Covers what
tests/test_backends.py's determinism test does not: batch_get_centers, the border
warp, the low-resolution loss with a saliency and a list of feature maps of two sizes,
the dense loss with an odd number of pixel tiles, and half-precision inputs."""

import hashlib
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import hang_guard

import scops_fast
from scops_fast import losses, reference, tps

pytestmark = pytest.mark.skipif(
    "cpp" not in scops_fast.available_backends(), reason="the cpp backend is not built"
)


def _inputs(dtype, seed=21):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    b, k, h, w = 3, 5, 37, 29  # several row tiles and dense pixel tiles, odd sizes
    pts = reference.target_points() * 1.15 + 0.1 * torch.randn(
        b, 25, 2, generator=g, dtype=torch.float64
    )
    return {
        "pred": r(b, k + 1, h, w, scale=3.0),
        "pred_tps": r(b, k + 1, h, w, scale=3.0),
        "probs": torch.rand(b, k, h, w, generator=g, dtype=torch.float64).to(dtype),
        "feats": r(b, 7, h, w),
        "low": [r(b, 4, 5, 4), r(b, 3, 3, 3), r(b, 2, 5, 4)],  # two sizes, one repeated
        "sal": torch.rand(b, h, w, generator=g, dtype=torch.float64).to(dtype),
        "basis": torch.rand(k, 7, generator=g, dtype=torch.float64).to(dtype),
        "basis_low": torch.rand(k, 9, generator=g, dtype=torch.float64).to(dtype),
        "x": r(b, 4, h, w),
        "pts": pts.to(torch.float32 if dtype != torch.float64 else dtype),
    }


def _ops():
    def con(t):
        return losses.concentration_loss(t["pred"], backend="cpp")

    def centers(t):
        return losses.batch_get_centers(t["probs"], backend="cpp")

    def dense(t):
        return losses.semantic_consistency_loss(t["feats"], t["pred"], t["basis"], backend="cpp")

    def lowres(t):
        return losses.semantic_consistency_loss_lowres(
            t["low"], t["pred"], t["basis_low"], t["sal"], backend="cpp"
        )

    def lowres_plain(t):
        return losses.semantic_consistency_loss_lowres(
            t["low"][0], t["pred"], t["basis_low"][:, :4], backend="cpp"
        )

    def warp(t, padding):
        return tps.tps_warp(t["x"], t["pts"], padding_mode=padding, backend="cpp")

    def eqv(t, padding):
        return torch.stack(
            losses.equivariance_losses(
                t["pred"], t["pred_tps"], t["pts"], padding_mode=padding, backend="cpp"
            )
        )

    return {
        "concentration": (con, ["pred"]),
        "centers": (centers, ["probs"]),
        "semantic_dense": (dense, ["pred", "basis"]),
        "semantic_lowres_saliency_list": (lowres, ["pred", "basis_low"]),
        "semantic_lowres": (lowres_plain, ["pred", "basis_low"]),
        "warp_zeros": (lambda t: warp(t, "zeros"), ["x"]),
        "warp_border": (lambda t: warp(t, "border"), ["x"]),
        "equivariance_zeros": (lambda t: eqv(t, "zeros"), ["pred", "pred_tps"]),
        "equivariance_border": (lambda t: eqv(t, "border"), ["pred", "pred_tps"]),
    }


def run_op(name, dtype):
    """(output, gradients) of op `name` under a fixed upstream weight."""
    fn, wrt = _ops()[name]
    t = _inputs(dtype)
    for key in wrt:
        t[key] = t[key].clone().requires_grad_(True)
    out = fn(t)
    weight = torch.rand(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), [t[k] for k in wrt])
    return [out.detach(), *grads]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def all_digests(threads_list=(1, 2, 3, 4), dtypes=tuple(DTYPES)) -> dict:
    saved = torch.get_num_threads()
    out = {}
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for dname in dtypes:
                dtype = DTYPES[dname]
                for name in _ops():
                    out[f"{name}/{dname}/{threads}"] = digest(run_op(name, dtype))
    finally:
        torch.set_num_threads(saved)
    return out


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", list(_ops()))
def test_forward_and_backward_bitwise_across_calls_and_threads(name, dtype):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = run_op(name, dtype)
        again = run_op(name, dtype)
        others = []
        for threads in (1, 3, 4):
            torch.set_num_threads(threads)
            others.append(run_op(name, dtype))
    finally:
        torch.set_num_threads(saved)
    for other in (again, *others):
        for a, b in zip(first, other, strict=True):
            assert a.dtype == b.dtype
            assert (
                torch.equal(a, b)
                or (a.isnan() == b.isnan()).all()
                and torch.equal(a.nan_to_num(), b.nan_to_num())
            )
    assert all(torch.isfinite(a).all() for a in first), name


def test_bitwise_across_processes():
    """A fresh interpreter (other allocations, other thread pool) gives the same bits."""
    here = all_digests(threads_list=(2,), dtypes=("float32",))
    tests = str(pathlib.Path(__file__).parent)
    script = (
        f"import json, sys; sys.path.insert(0, {tests!r});"
        "import test_robust_determinism as t;"
        "print(json.dumps(t.all_digests(threads_list=(2,), dtypes=('float32',))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=hang_guard(300)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    there = json.loads(result.stdout.strip().splitlines()[-1])
    assert here == there
