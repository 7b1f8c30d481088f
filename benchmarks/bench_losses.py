"""Forward + backward time of every SCOPS loss, implementation beside implementation.

    pytest benchmarks/ --benchmark --bench-size quick

Implementations: "eager" (the public function with backend="reference"), "compile"
(torch.compile of the function in scops_fast.reference) and every other usable backend
of `scops_fast.available_backends()`. Each result's extra_info holds `min_bytes`, the
bytes the op must at least move (every input read once, every gradient written once),
so that min_bytes / time gives the achieved bandwidth.
"""

import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from scops_fast import BackendUnavailableError, available_backends, losses, reference, tps


@dataclass(frozen=True)
class Size:
    B: int
    K: int
    H: int
    W: int
    C: int
    h: int  # feature map height and width before upsampling (H/16, W/16)
    w: int
    # None: let pytest-benchmark calibrate; else pedantic rounds fitted to this many seconds.
    budget_s: float | None = None
    # The ops this size is meant for (None: all); the rest are skipped, not timed.
    ops: tuple | None = None


SIZES = {
    "quick": Size(B=2, K=4, H=64, W=64, C=64, h=4, w=4),
    # SPEC section 8: 256x256 crops, batch 6, K=8, VGG relu5_2 + relu5_4 at 1/16.
    "celeba": Size(B=6, K=8, H=256, W=256, C=1024, h=16, w=16, budget_s=2.0),
    # The CPU-kernel targets: the pixel-wise ops at batch 16, the semantic ones at batch 2.
    "b16": Size(
        B=16,
        K=8,
        H=256,
        W=256,
        C=1024,
        h=16,
        w=16,
        budget_s=2.0,
        ops=("concentration_loss", "batch_get_centers", "tps_warp", "equivariance_losses"),
    ),
    "dense2": Size(
        B=2,
        K=8,
        H=256,
        W=256,
        C=1024,
        h=16,
        w=16,
        budget_s=2.0,
        ops=("semantic_consistency_loss", "semantic_consistency_loss_lowres"),
    ),
}

OPS = {
    "concentration_loss": (losses.concentration_loss, reference.concentration_loss),
    "batch_get_centers": (losses.batch_get_centers, reference.batch_get_centers),
    "semantic_consistency_loss": (
        losses.semantic_consistency_loss,
        reference.semantic_consistency_loss,
    ),
    "semantic_consistency_loss_lowres": (
        losses.semantic_consistency_loss_lowres,
        reference.semantic_consistency_loss_lowres,
    ),
    "orthonormal_loss": (losses.orthonormal_loss, reference.orthonormal_loss),
    "tps_warp": (tps.tps_warp, reference.tps_warp),
    "equivariance_losses": (losses.equivariance_losses, reference.equivariance_losses),
}

# "reference" is what "eager" runs, so it is not listed twice.
IMPLS = ("eager", "compile", *(name for name in available_backends() if name != "reference"))
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def make_inputs(op: str, s: Size, device: str) -> dict:
    """The op's positional arguments by name; those requiring grad are fresh leaves."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, grad=False):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)

    def logits():
        return randn(s.B, s.K + 1, s.H, s.W, grad=True)

    def source_points():
        # The CelebA warp flags of SPEC section 8.
        warp = tps.RandTPS(
            s.W,
            s.H,
            batch_size=s.B,
            random_scale=(0.7, 2.0),
            random_mirror=False,
            generator=torch.Generator().manual_seed(0),
        )
        return warp.source_control_points.to(device)

    if op == "concentration_loss":
        return {"pred": logits()}
    if op == "batch_get_centers":
        probs = torch.softmax(randn(s.B, s.K + 1, s.H, s.W), dim=1)[:, 1:]
        return {"part_probs": probs.contiguous().requires_grad_()}
    if op == "orthonormal_loss":
        return {"w": randn(s.K, s.C, grad=True)}
    if op == "tps_warp":
        return {"x": logits(), "source_points": source_points()}
    if op == "equivariance_losses":
        return {"pred": logits(), "pred_tps": logits(), "source_points": source_points()}

    # Semantic losses: post-ReLU features, relu(|N(0,1)|) basis, saliency on as in training.
    low = randn(s.B, s.C, s.h, s.w).relu()
    saliency = torch.rand(s.B, s.H, s.W, generator=gen).to(device)
    basis = randn(s.K, s.C).abs().requires_grad_()
    if op == "semantic_consistency_loss_lowres":
        return {"features": low, "pred": logits(), "basis": basis, "saliency": saliency}
    # The dense loss gets the V the low-resolution form builds, so both compute one value.
    dense = F.interpolate(low, size=(s.H, s.W), mode="bilinear", align_corners=True)
    return {"features": dense.mul_(saliency[:, None]), "pred": logits(), "basis": basis}


def implementation(op: str, impl: str, device: str):
    public, ref = OPS[op]
    if impl == "compile":
        # A fresh cache per case: otherwise the second size recompiles with dynamic shapes.
        torch._dynamo.reset()
        return torch.compile(ref, dynamic=False)
    name = "reference" if impl == "eager" else impl
    if device not in available_backends()[name]:
        pytest.skip(f"backend {name!r} does not run on {device} tensors")
    if public is losses.orthonormal_loss:  # it takes no backend= and always runs the reference
        if name != "reference":
            pytest.skip(f"{op} has no backend= argument")
        return public
    return lambda *args: public(*args, backend=name)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward(benchmark, size, device, op, impl):
    if SIZES[size].ops is not None and op not in SIZES[size].ops:
        pytest.skip(f"size {size!r} is not meant for {op}")
    fn = implementation(op, impl, device)
    inputs = make_inputs(op, SIZES[size], device)
    args = tuple(inputs.values())
    leaves = [t for t in args if t.requires_grad]

    def step():
        out = fn(*args)
        outs = (out,) if torch.is_tensor(out) else tuple(out)
        grads = torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])
        if device == "cuda":
            torch.cuda.synchronize()
        return grads

    # Warm-up keeps compilation (forward on the first call, backward on the first
    # backward) and first-call allocations out of the timings.
    try:
        for _ in range(2 if impl == "compile" else 1):
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    except Exception as exc:
        if impl != "compile":
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        pytest.skip(f"torch.compile failed: {type(exc).__name__}: {message}")

    benchmark.group = f"{op} {size} {device}"
    benchmark.extra_info.update(
        op=op,
        impl=impl,
        size=size,
        device=device,
        shape={name: list(t.shape) for name, t in inputs.items()},
        min_bytes=sum(map(nbytes, args)) + sum(map(nbytes, leaves)),
    )
    budget = SIZES[size].budget_s
    if budget is None:
        benchmark(step)
    else:
        rounds = max(3, min(100, int(budget / max(seconds, 1e-6))))
        benchmark.pedantic(step, rounds=rounds, iterations=1)


@pytest.mark.parametrize("device", DEVICES)
def test_copy_bandwidth(benchmark, size, device):
    """A plain copy of one logits tensor: the bandwidth the ops are reported against."""
    s = SIZES[size]
    x = torch.randn(s.B, s.K + 1, s.H, s.W, device=device)
    out = torch.empty_like(x)

    def step():
        out.copy_(x)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"copy {size} {device}"
    benchmark.extra_info.update(
        op="copy", impl="copy", size=size, device=device, min_bytes=2 * nbytes(x)
    )
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
