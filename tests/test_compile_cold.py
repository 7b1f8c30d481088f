"""torch.compile as a user calls it: fullgraph=True with the default (Inductor) backend, over
every public loss and tps_warp, forward and backward, as the first thing a fresh process does,
for every backend name that runs here and for the default, and the ways a user varies the call
(dynamic shapes, border padding, channels_last, float64, no_grad, a whole training step, the
rest of the public surface, recompiles, inference mode, the C++ wrapper, AOTInductor). Each
process starts with a different op (tests/compile_cold_child.py)."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import hang_guard

CHILD = pathlib.Path(__file__).with_name("compile_cold_child.py")
ROOT = CHILD.parents[1]
OPS = (
    "concentration_loss",
    "batch_get_centers",
    "semantic_consistency_loss",
    "semantic_consistency_loss_lowres",
    "orthonormal_loss",
    "equivariance_losses",
    "tps_warp",
)
#: (backend, the op compiled first, variant): see compile_cold_child.py.
RUNS = (
    # "auto" by name resolves as the default (None) does: it is compiled first in the
    # channels_last-float64-border and extras runs rather than in a plain run of its own.
    ("None", "concentration_loss", "plain"),
    ("reference", "equivariance_losses", "plain"),
    ("cpp", "semantic_consistency_loss_lowres", "plain"),
    ("cuda_emu", "batch_get_centers", "plain"),
    ("triton", "orthonormal_loss", "plain"),  # through the interpreter, on CPU tensors
    ("cpp", "tps_warp", "dynamic"),
    # Three ways of calling in one run: each graph compiled cold costs seconds of CPU, and
    # a run per way cost make test a minute.
    ("auto", "equivariance_losses", "channels_last-float64-border"),
    ("cpp", "batch_get_centers", "no_grad"),
    ("None", "step", "step"),
    ("auto", "tps_warp_points_grad", "extras"),
    ("cpp", "aot_inductor", "deploy"),
)
EXTRAS = (
    "get_variance",
    "orthonomal_loss",
    "tps_grid",
    "RandTPS",
    "tps_warp_points_grad",
    "equivariance_losses_points_grad",
)
DEPLOY = ("recompiles", "inference_mode", "cpp_wrapper", "aot_inductor", "export_dynamic")
#: What a run needs in its environment besides a private Inductor cache. Like the shared
#: suite (backends_under_test.py), this expects cuda_emu built and triton installed.
RUN_ENV = {"triton": {"TRITON_INTERPRET": "1"}}


#: The variants that take longest start first (alone here: dynamic 66 s, step 46 s, a plain
#: run 36 s; deploy ended last, alone, in pairs), so that no child is left running alone at
#: the end with a core idle.
SLOW_FIRST = ("deploy", "dynamic", "step", "extras")
#: Runs first: a graph that an earlier child compiled loads from the shared cache, and the
#: default's plain run traces the same graphs as cpp's (the default resolves to cpp on the
#: CPU), so it took 11 s after this one instead of 45 s beside it.
SEED = ("cpp", "semantic_consistency_loss_lowres", "plain")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The children, two at a time (each compiles on one core; the next starts as soon as
    one ends), sharing an Inductor cache that starts empty: cold, and immune to kernels
    cached by a process that saw another CPU capability (torch reuses them and computes
    garbage). One at a time made this file the suite's last by 2.5 minutes under
    pytest-xdist."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor"))}
    # The checkout is the package where nothing installed it (`make test-gpu-stack`, a GPU
    # machine): the children import it from there too.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def child(run):
        done = subprocess.run(
            [sys.executable, str(CHILD), *run],
            capture_output=True,
            text=True,
            env={**env, **RUN_ENV.get(run[0], {})},
            timeout=hang_guard(900),
        )
        return done.returncode, done.stdout, done.stderr

    slow = {variant: i for i, variant in enumerate(SLOW_FIRST)}
    order = sorted(RUNS, key=lambda run: (run != SEED, slow.get(run[2], len(slow))))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(order, pool.map(child, order), strict=True))


@pytest.mark.parametrize("run", RUNS, ids=[f"{b}-{v}-first-{op}" for b, op, v in RUNS])
def test_every_op_compiles_cold_with_inductor(outputs, run):
    code, out, err = outputs[run]
    assert code == 0, err[-3000:]
    lines = out.split("\n")
    assert lines[0].startswith(run[1] + " ok"), out
    seen = {}
    for line in lines:
        if " ok " in line:
            name, _, error = line.split()
            seen[name] = float(error)
    variants = {"step": {"step"}, "extras": set(EXTRAS), "deploy": set(DEPLOY)}
    expected = variants.get(run[2], set(OPS))
    assert set(seen) == expected, out
    # float32 throughout but the float64 run, whose errors are rounding of float64.
    assert max(seen.values()) < (1e-12 if "float64" in run[2] else 1e-4), seen
    # torch's "No CUDA runtime is found" notice (Inductor imports the extension loader) is
    # not shown to a CPU user (scops_fast._quiet).
    if not torch.cuda.is_available():
        assert "No CUDA runtime is found" not in err


def test_an_argument_error_under_compile_carries_our_message():
    """Under fullgraph=True torch reports any exception raised while tracing as its own
    Unsupported ("Observed exception"); our message must be in it. Without fullgraph the
    call falls back to eager and raises ours."""
    import torch._dynamo

    from scops_fast import losses

    bad = torch.randn(5, 12, 10)  # (K+1, H, W): the batch dimension is missing
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="pred: expected"):
        torch.compile(lambda p: losses.concentration_loss(p), fullgraph=True)(bad)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="pred: expected"):
        torch.compile(lambda p: losses.concentration_loss(p))(bad)


def test_set_backend_after_compiling_retraces():
    """A compiled function guards on the process default: after set_backend() it dispatches
    anew (here to a backend that cannot run, so the call must fail, not reuse the graph)."""
    import torch._dynamo

    import scops_fast
    from scops_fast import losses

    p = torch.randn(2, 4, 6, 5)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: losses.concentration_loss(x), backend="eager")
    first = compiled(p)
    try:
        scops_fast.set_backend("cuda")
        with pytest.raises(scops_fast.BackendUnavailableError, match="'cuda'"):
            compiled(p)
    finally:
        scops_fast.set_backend(None)
    torch.testing.assert_close(compiled(p), first, rtol=0, atol=0)
