"""Forward + backward time and peak memory of every SCOPS loss, implementation beside
implementation.

    pytest benchmarks/ --benchmark                       # every op at the CelebA size, ~2 min
    pytest benchmarks/ --benchmark --impl cuda_emu       # + a backend for checking only
    pytest benchmarks/ --benchmark --bench-size all      # quick, celeba, b16, dense2
    pytest benchmarks/bench_losses.py --benchmark --bench-size heavy   # b32, hires512

Implementations: "eager" (the public function with backend="reference"), "compile"
(torch.compile of the function in scops_fast.reference) and every other usable backend
of `scops_fast.available_backends()` except those labelled for checking only (their
module's `checking_only()`: cuda_emu, Triton's CPU interpreter), which are timed only when
named: `--impl cuda_emu` (comma-separated, adds to the default list). Each result's
extra_info holds `min_bytes`, the bytes the op must at least move (every input read once,
every gradient written once), so that min_bytes / time gives the achieved bandwidth, and
`peak_mb`, the resident-set high-water mark of one forward + backward above the resident
set just before it (inputs created, warm-up and compilation done), measured in a fresh
subprocess per implementation, the ops one after another with the high-water mark reset
before each (`python benchmarks/bench_losses.py IMPL SIZE DEVICE OP...`; --bench-memory
off leaves it out). Cases whose estimated working set is above
--bench-max-gb are skipped before any input is made.
"""

import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from scops_fast import BackendUnavailableError, available_backends, losses, reference, tps
from scops_fast._dispatch import BACKENDS


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
    # Batch of the two semantic losses when it differs from B (what fits in memory).
    B_semantic: int | None = None

    def for_op(self, op: str) -> "Size":
        if self.B_semantic is not None and op.startswith("semantic"):
            return dataclasses.replace(self, B=self.B_semantic, B_semantic=None)
        return self


SIZES = {
    # What `pytest benchmarks/ --benchmark` runs: every op at the CelebA size, the two
    # semantic losses at batch 1 (their eager references take seconds per call at 6).
    "default": Size(B=6, K=8, H=256, W=256, C=1024, h=16, w=16, budget_s=0.5, B_semantic=1),
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
    # Heavy sizes (opt-in: --bench-size heavy). Training-scale batch: the dense semantic
    # loss's V alone would be 8.6 GB, so it is left out; the others run where they fit.
    "b32": Size(
        B=32,
        K=8,
        H=256,
        W=256,
        C=1024,
        h=16,
        w=16,
        budget_s=3.0,
        ops=(
            "concentration_loss",
            "batch_get_centers",
            "tps_warp",
            "equivariance_losses",
            "semantic_consistency_loss_lowres",
        ),
    ),
    # 512x512 crops: batch 2 for the pixel-wise ops, 1 for the semantic ones (V is 1 GB
    # per image there and the reference holds several copies of it).
    "hires512": Size(B=2, K=8, H=512, W=512, C=1024, h=32, w=32, budget_s=3.0, B_semantic=1),
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


def case_impls(named: str = "", report=None) -> tuple:
    """The implementations timed: eager, compile and the usable backends meant to be used,
    then those named in `named` (the --impl option, comma-separated) that are not already
    there. "reference" is what "eager" runs, so it is not listed twice; "original" (the
    original SCOPS code's own functions) joins with --original (conftest.py). A backend
    labelled for checking only joins only when named: with it beside them, the others'
    timings would say nothing a user can use (cuda_emu runs every CUDA thread in turn on one
    core)."""
    report = available_backends() if report is None else report
    out = ["eager", "compile"]
    out += [n for n in report if n != "reference" and n not in report.checking_only]
    known = ("eager", "compile", *(n for n in BACKENDS if n != "reference"))
    for name in filter(None, (part.strip() for part in named.split(","))):
        if name not in known:
            hint = " (it joins with --original)" if name == "original" else ""
            raise pytest.UsageError(
                f"--impl: unknown implementation {name!r}{hint}; choose from {', '.join(known)}"
            )
        if name not in report and name not in ("eager", "compile"):
            raise pytest.UsageError(
                f"--impl: backend {name!r} is not usable here: {report.unavailable.get(name)}"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


#: The original's functions for our ops, by (module, name): its loss.py and utils.
ORIGINAL_FUNCTIONS = {
    "concentration_loss": ("loss", "concentration_loss"),
    "semantic_consistency_loss": ("loss", "semantic_consistency_loss"),
    "orthonormal_loss": ("loss", "orthonomal_loss"),
    "batch_get_centers": ("utils.utils", "batch_get_centers"),
}
_original_checkout = []


def original_function(op: str):
    """The original code's function for `op`, from the checkout named by the environment
    (conftest.py sets it from --original); skips the case where the original has none."""
    if op not in ORIGINAL_FUNCTIONS:
        pytest.skip(f"the original has no function for {op} (its trainer computes it inline)")
    if not _original_checkout:
        import importlib
        import pathlib
        import tempfile

        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
        from original_checkout import prepare_original

        work = pathlib.Path(tempfile.mkdtemp(prefix="scops-original-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)  # 29 MB a run
        prepare_original(
            pathlib.Path(os.environ["SCOPS_FAST_ORIGINAL"]),
            pathlib.Path(os.environ["SCOPS_FAST_ORIGINAL_TPS"]),
            work,
        )
        _original_checkout.append(importlib)
    module, name = ORIGINAL_FUNCTIONS[op]
    return getattr(_original_checkout[0].import_module(module), name)


DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


# The floor of every fused op (printed by benchmarks/floors.py): float32 tensors; every
# input read once and every output and gradient written once per pass that needs it; flops
# count a fused multiply-add as 2 and an exp or log as 1 (a lower bound).
def floors(B=6, K=8, H=256, W=256, C=1024, h=16, w=16, itemsize=4):
    K1, N = K + 1, B * H * W
    logits = N * K1 * itemsize
    softmax = N * K1 * 4  # max, subtract, exp, normalise per element
    return {
        # One pass reads the logits and writes the gradient (the fused op forms it in the
        # forward; the backward only scales it). Per pixel and part: the 3 moment sums, and
        # the part's polynomial, its share of the dot product and its gradient.
        "concentration_loss": (2 * logits, softmax + 2 * N * K * 8),
        # Same passes over (B, K, H, W) probabilities, without the softmax.
        "batch_get_centers": (3 * N * K * itemsize, 2 * N * K * 8),
        # Per pass: the spline position (25 radial terms: 2 subtractions, 3 mul-adds and a
        # log each, then 28 x 2 mul-adds), then 4 bilinear mul-adds per channel. Forward
        # reads x, writes the output; backward reads the gradient and writes one.
        "tps_warp (K+1 channels)": (4 * logits, 2 * N * (25 * 9 + 112 + K1 * 8)),
        # Forward reads pred and pred_tps; backward reads both and writes both gradients.
        "equivariance_losses": (
            6 * logits,
            2 * N * (25 * 9 + 112 + K1 * 8) + 4 * softmax + 2 * N * K1 * 4 + 2 * N * K * 12,
        ),
        # V (B, C, H, W) read once (forward and backward fused), logits in, gradient out;
        # per pixel and channel: residual (K mul-adds), its square, and K mul-adds each
        # for the gradients of P and W.
        "semantic_consistency_loss": (
            N * C * itemsize + 2 * logits,
            N * C * (3 * 2 * K + 2) + softmax,
        ),
        # Logits in, gradient out, the low-resolution features read once; per pixel the
        # K x K quadratic form, the upsampled K-vector and the 10-term |UV|^2; at low
        # resolution A = W V and the five neighbour Gram maps.
        "semantic_consistency_loss_lowres": (
            2 * logits + B * C * h * w * itemsize,
            N * (2 * 2 * K * K + 2 * 8 * K + 40) + softmax + B * h * w * C * 2 * (K + 5),
        ),
    }


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
    if impl == "original":
        return original_function(op)
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


def estimated_bytes(op: str, impl: str, s: Size) -> int:
    """A generous guess of a case's working set (inputs, outputs, gradients and the
    intermediates autograd keeps), to skip cases that cannot fit before making them."""
    logits = s.B * (s.K + 1) * s.H * s.W * 4
    dense_v = s.B * s.C * s.H * s.W * 4
    fast = impl not in ("eager", "compile")
    if op == "semantic_consistency_loss":
        return dense_v * (2 if fast else 5) + 8 * logits
    if op == "semantic_consistency_loss_lowres":
        return (0 if fast else 5 * dense_v) + 8 * logits
    if op == "orthonormal_loss":
        return 0
    return logits * (6 if fast else 16)


def step_function(fn, args, leaves, device):
    def step():
        out = fn(*args)
        outs = (out,) if torch.is_tensor(out) else tuple(out)
        grads = torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])
        if device == "cuda":
            torch.cuda.synchronize()
        return grads

    return step


_memory_results: dict = {}


def measure_memory(request, op: str, impl: str, size: str, device: str, max_gb: float) -> dict:
    """The JSON result of `memory_child` for this case. One fresh interpreter measures every
    op this session times with (impl, size, device), one after another, each against its
    own baseline: an interpreter's start and torch's import (about 3 s) then come once per
    implementation instead of once per case, a third of the default run. An op it did not
    measure (the kernel cannot reset the high-water mark, or the child died) gets a child
    of its own."""
    key = (impl, size, device)
    if key not in _memory_results:
        ops = [
            item.callspec.params["op"]
            for item in request.session.items
            if "op" in getattr(getattr(item, "callspec", None), "params", {})
            and (item.callspec.params.get("impl"), item.callspec.params.get("size")) == (impl, size)
            and item.callspec.params.get("device") == device
        ]
        _memory_results[key] = _run_memory_child(ops or [op], impl, size, device, max_gb)
    results = _memory_results[key]
    if op not in results:
        results.update(_run_memory_child([op], impl, size, device, max_gb))
    return results[op]


def _run_memory_child(ops: list, impl: str, size: str, device: str, max_gb: float) -> dict:
    """{op: result} from one child measuring `ops` in turn; an op whose result is missing
    is absent, except with a single op, which then gets the child's failure."""
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "bench_losses.py"), impl, size, device, *ops]
    cmd += ["--max-gb", str(max_gb)]
    # A fixed mmap threshold: glibc then maps every large block and unmaps it when
    # freed, so the warm-up's freed tensors do not stay resident and hide the measured
    # step's allocations (the dynamic threshold would serve them from a resident heap),
    # and an earlier op's freed tensors do not serve a later op's.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("@@ "):
            result = json.loads(line[3:])
            results[result.pop("op")] = result
    if len(ops) == 1 and ops[0] not in results:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        results[ops[0]] = {"status": "failed", "error": f"exit {proc.returncode}: {tail}"[:300]}
    return results


def skip_reason(op: str, impl: str, size: str, max_gb: float) -> str | None:
    """Why the case is not run, before anything is made (None: it runs)."""
    if SIZES[size].ops is not None and op not in SIZES[size].ops:
        return f"size {size!r} is not meant for {op}"
    estimate = estimated_bytes(op, impl, SIZES[size].for_op(op))
    if estimate > max_gb * 1e9:
        return f"estimated working set {estimate / 1e9:.1f} GB > --bench-max-gb {max_gb:g}"
    return None


def memory_child(op: str, impl: str, size: str, device: str, max_gb: float) -> dict:
    """Inputs, warm-up (compilation included), then one forward + backward under a
    resident-set peak measurement. `reset`: whether the high-water mark was reset to the
    resident set before it (else it is the process's since its start)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import memprobe

    reason = skip_reason(op, impl, size, max_gb)
    if reason is not None:
        pytest.skip(reason)
    s = SIZES[size].for_op(op)
    fn = implementation(op, impl, device)
    inputs = make_inputs(op, s, device)
    args = tuple(inputs.values())
    step = step_function(fn, args, [t for t in args if t.requires_grad], device)
    if device == "cpu":
        memprobe.guard(max_gb * 1024)
    for _ in range(2 if impl == "compile" else 1):
        step()
    with memprobe.Peak() as peak:
        step()
    return {
        "status": "ok",
        "peak_mb": peak.peak_mb,
        "hwm_mb": peak.hwm_mb,
        "baseline_mb": peak.baseline_mb,
        "reset": peak.reset,
    }


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward(benchmark, request, size, device, op, impl):
    max_gb = request.config.getoption("bench_max_gb")
    reason = skip_reason(op, impl, size, max_gb)
    if reason is not None:
        pytest.skip(reason)
    s = SIZES[size].for_op(op)
    fn = implementation(op, impl, device)
    inputs = make_inputs(op, s, device)
    args = tuple(inputs.values())
    leaves = [t for t in args if t.requires_grad]
    step = step_function(fn, args, leaves, device)

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
    if request.config.getoption("bench_memory") == "on" and device == "cpu":
        del inputs, args, leaves, step  # the child needs the memory, not this process
        memory = measure_memory(request, op, impl, size, device, max_gb)
        benchmark.extra_info.update(
            {k: v for k, v in memory.items() if k in ("peak_mb", "hwm_mb", "baseline_mb")},
            memory_status=memory["status"],
        )
        if memory["status"] != "ok":
            benchmark.extra_info["memory_error"] = memory.get("error", "")


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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="peak memory of cases, in this process")
    parser.add_argument("impl", help="eager, compile, original or a backend name")
    parser.add_argument("size", choices=tuple(SIZES))
    parser.add_argument("device")
    parser.add_argument("ops", nargs="+", choices=tuple(OPS), metavar="OP")
    parser.add_argument("--max-gb", type=float, default=10.0)
    a = parser.parse_args()
    for op in a.ops:
        try:
            result = memory_child(op, a.impl, a.size, a.device, a.max_gb)
        except BaseException as exc:  # pytest.skip raises a BaseException
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        print("@@ " + json.dumps({"op": op, **result}), flush=True)
        if result.get("reset") is False:
            break  # the next op's peak would include this one's: it gets its own child
