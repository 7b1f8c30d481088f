"""torch.compile as a user calls it: fullgraph=True with the default (Inductor) backend, over
every public loss and tps_warp, forward and backward, as the first thing a fresh process does,
for every backend name that runs here and for the default. Each process starts with a
different op (tests/compile_cold_child.py)."""

import os
import pathlib
import subprocess
import sys

import pytest

CHILD = pathlib.Path(__file__).with_name("compile_cold_child.py")
OPS = (
    "concentration_loss",
    "batch_get_centers",
    "semantic_consistency_loss",
    "semantic_consistency_loss_lowres",
    "orthonormal_loss",
    "equivariance_losses",
    "tps_warp",
)
RUNS = (
    ("None", "concentration_loss"),
    ("auto", "tps_warp"),
    ("reference", "equivariance_losses"),
    ("cpp", "semantic_consistency_loss_lowres"),
)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The four children, two at a time (each compiles on one core), with an empty
    Inductor cache of their own: cold, and immune to kernels cached by a process that
    saw another CPU capability (torch reuses them and computes garbage)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor"))}
    done = {}
    for pair in (RUNS[:2], RUNS[2:]):
        procs = {
            run: subprocess.Popen(
                [sys.executable, str(CHILD), *run],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for run in pair
        }
        for run, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            done[run] = (proc.returncode, out, err)
    return done


@pytest.mark.parametrize("run", RUNS, ids=[f"{b}-first-{op}" for b, op in RUNS])
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
    assert set(seen) == set(OPS), out
    assert max(seen.values()) < 1e-4, seen
    # torch's "No CUDA runtime is found" notice (Inductor imports the extension loader) is
    # not shown to a CPU user (scops_fast._quiet).
    import torch

    if not torch.cuda.is_available():
        assert "No CUDA runtime is found" not in err
