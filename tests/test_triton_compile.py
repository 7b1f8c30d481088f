"""The Triton kernels compile for a CUDA GPU (sm_90), checked without one.

The CPU tests run the kernels through Triton's interpreter, which accepts programs the
GPU compiler rejects; `scops_fast.triton_kernels.aot` lowers each kernel to PTX and
cubin instead. It runs in a child process without TRITON_INTERPRET, which
test_backends may have set in this one.
"""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import hang_guard

pytest.importorskip("triton")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "scops_fast.triton_kernels.aot", "--arch", "90"]
    done = subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, timeout=hang_guard(600)
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert report.count(" ok: ") == 10, report
