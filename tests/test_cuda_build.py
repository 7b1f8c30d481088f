"""The CUDA kernels compile, link, load and register, even on a machine without a GPU
(`make test` builds them for sm_80 and sm_90 wherever nvcc is found); without a CUDA
toolkit the build goes on without them and says why."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import without_cuda_toolkit

import scops_fast
from scops_fast import _dispatch, _ext

ROOT = pathlib.Path(__file__).resolve().parents[1]

OPS = [
    "softmax_moments",
    "softmax_moments_backward",
    "tps_warp",
    "tps_warp_backward",
    "equivariance",
    "equivariance_backward",
    "semantic_dense",
    "semantic_lowres",
]

built = importlib.util.find_spec("scops_fast._C_cuda") is not None


def nvcc_here() -> str | None:
    """The nvcc setup.py would compile with now (its lookup order), or None."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        candidates = [pathlib.Path(home, "bin", "nvcc")]
    else:
        on_path = shutil.which("nvcc")
        candidates = [pathlib.Path("/usr/local/cuda/bin/nvcc")]
        candidates += [pathlib.Path(on_path)] if on_path else []
    return next((str(c) for c in candidates if c.exists()), None)


@pytest.mark.gpu
def test_cuda_library_loads_and_registers_every_op():
    if not built:
        # Skipped only where the build could not have made it: a missing library where
        # nvcc exists is a failed or stale build.
        why = _ext.load("_C_cuda")
        if os.environ.get("FORCE_CUDA") == "0" or nvcc_here() is None:
            pytest.skip(f"scops_fast._C_cuda: {why}")
        pytest.fail(
            f"scops_fast._C_cuda is missing although nvcc is here ({nvcc_here()}): {why}. "
            "`make install` builds it"
        )
    assert _ext.load("_C") is None
    assert _ext.load("_C_cuda") is None
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"scops_fast::{op}", "CUDA"), op


def test_cuda_backend_reports_why_it_cannot_run_here():
    report = scops_fast.available_backends()
    if torch.cuda.is_available():
        assert "cuda" in report
    else:
        assert "cuda" not in report and report.unavailable["cuda"]


def test_a_skipped_cuda_build_says_why_and_what_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(_ext, "BUILD_ERRORS", tmp_path)
    (tmp_path / "_C_cuda.txt").write_text("not built: no CUDA toolkit found at build time (x)\n")
    (tmp_path / "_C_cuda_emu.txt").write_text("CompileError: the emulation's own error\n")
    why = _ext._not_built("_C_cuda")
    assert why.startswith("not built: no CUDA toolkit found at build time (x)"), why
    assert "triton backend and the reference still run" in why and "emulation" not in why
    (tmp_path / "_C_cuda.txt").write_text("CompileError: nvcc said no\n")
    assert _ext._not_built("_C_cuda").startswith("the build failed: CompileError: nvcc said no")


def test_forced_strict_cuda_build_without_a_toolkit_fails_first_in_one_line(tmp_path):
    """FORCE_CUDA=1 with SCOPS_FAST_STRICT_BUILD=1 and no nvcc: setup.py stops before it
    compiles anything (a copy of setup.py alone, so nothing here is touched)."""
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    env = without_cuda_toolkit(dict(os.environ), tmp_path / "hidden")
    env.update(FORCE_CUDA="1", SCOPS_FAST_STRICT_BUILD="1")
    run = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "error: FORCE_CUDA=1 asks for the CUDA kernels, but no CUDA toolkit found at build "
        f"time (CUDA_HOME={env['CUDA_HOME']} holds no bin/nvcc): set CUDA_HOME to a CUDA "
        "toolkit, or build without them (FORCE_CUDA=0 or auto)"
    ]
    assert not (tmp_path / "scops_fast").exists() and not (tmp_path / "build").exists()


def test_auto_never_picks_a_gpu_backend_for_cpu_tensors():
    for op in _dispatch._load("reference").module.OPS:
        assert _dispatch.choose(op, "auto", "cpu") in ("cpp", "reference")
