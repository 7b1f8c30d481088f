"""The package as a user installs it: `FORCE_CUDA=1 pip wheel . --no-build-isolation` (torch
already installed) on a machine without the CUDA toolkit (no nvcc on PATH, CUDA_HOME an
empty folder) gives a wheel with the compiled CPU kernels and a record of why the CUDA
kernels are missing; installed into a fresh virtual environment with no compiler on PATH
it imports, the cpp backend runs, the cuda backend says why it cannot, and scops-train
trains two steps. The wheel is built from this checkout, as a user runs the command, so
it links the objects `make install` compiled (build/temp.*: setup.py's object_folder):
compiling both x86-64 builds again took 3 minutes of the suite, and the compile itself is
what `make install` checks, strictly."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest
from conftest import hang_guard, without_cuda_toolkit

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from this checkout. Its libraries and records go to build/lib.*
    (emptied first: a wheel built earlier with the CUDA toolkit left _C_cuda there), never
    to scops_fast/, which the other tests import."""
    tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    shutil.rmtree(ROOT / "build" / f"lib.{tag}", ignore_errors=True)
    dist = tmp_path_factory.mktemp("dist")
    # A user's case: a GPU machine (FORCE_CUDA=1 stands for torch seeing one) whose torch
    # came from pip, with no toolkit; not strict, as a user builds.
    env = without_cuda_toolkit(dict(os.environ), tmp_path_factory.mktemp("no_cuda"))
    env["FORCE_CUDA"] = "1"
    for var in ("SCOPS_FAST_MARCH", "SCOPS_FAST_STRICT_BUILD", "SCOPS_FAST_CUDA_EMU"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps"]
    cmd += ["--disable-pip-version-check", "-q", "-w", str(dist)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=hang_guard(900))
    (whl,) = dist.glob("scops_fast-*.whl")
    return whl


def test_the_wheel_holds_the_kernels_and_pins_torch(wheel):
    import torch

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(z.read(n).decode() for n in names if n.endswith("/METADATA"))
        records = {
            pathlib.PurePath(n).name: z.read(n).decode() for n in names if "/_build_errors/" in n
        }
    libs = {pathlib.PurePath(n).name.split(".")[0] for n in names if n.endswith(".so")}
    assert {"_C_avx2", "_C_avx512"} <= libs, records
    assert "_C_cuda" not in libs and "_C_cuda_emu" not in libs, libs
    # Only the skipped CUDA compile is recorded: a failed CPU compile would be too.
    assert list(records) == ["_C_cuda.txt"], records
    assert records["_C_cuda.txt"].startswith("not built: no CUDA toolkit found at build time")
    assert f"Requires-Dist: torch=={torch.__version__.split('+')[0]}" in meta
    assert any(n.endswith("configs/celeba-k8-original.json") for n in names)


def test_the_wheel_runs_in_a_fresh_venv_without_a_compiler(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # The heavy dependencies (torch, ...) come from this environment, not from a download.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pathlib.Path(site, "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    env = {"HOME": str(tmp_path), "PATH": str(env_dir / "bin")}  # no gcc, no c++, no nvcc
    check = (
        "import shutil, torch, scops_fast\n"
        "from scops_fast import losses\n"
        "assert shutil.which('gcc') is None and shutil.which('c++') is None\n"
        f"assert scops_fast.__file__.startswith({str(env_dir)!r})\n"
        "print(scops_fast.available_backends().details['cpp'])\n"
        "print(scops_fast.available_backends().unavailable['cuda'])\n"
        "print(float(losses.concentration_loss(torch.randn(2, 5, 16, 16), backend='cpp')))\n"
    )
    out = subprocess.run(
        [str(py), "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kernels" in out.stdout
    assert "not built: no CUDA toolkit found at build time" in out.stdout, out.stdout
    assert "the triton backend and the reference still run" in out.stdout, out.stdout
    train = subprocess.run(
        [str(env_dir / "bin" / "scops-train"), "--config", "demo", "--steps", "2"]
        + ["--out", str(tmp_path / "run"), "--set", "evaluation.enabled=false"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").exists()
