import os
import pathlib
import shutil
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import rounding  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
#: How much slower than this machine the suite may run (scripts/no_avx512.py sets 10: every
#: instruction emulated); the tests' hang guards scale by it.
SLOWDOWN = float(os.environ.get("SCOPS_FAST_TEST_SLOWDOWN", "1"))


def hang_guard(seconds: float) -> float:
    """A timeout meant to catch a hang, not to time anything: `seconds` on this machine."""
    return seconds * SLOWDOWN


def without_cuda_toolkit(env: dict, scratch: pathlib.Path) -> dict:
    """`env` as on a machine without the CUDA toolkit: a PATH with no nvcc (a folder that
    holds one is replaced by a copy of its other entries, as links) and CUDA_HOME an empty
    folder, which also hides /usr/local/cuda from setup.py and torch."""
    folders = []
    for i, folder in enumerate(env.get("PATH", "").split(os.pathsep)):
        if folder and pathlib.Path(folder, "nvcc").exists():
            shadow = scratch / f"path{i}"
            shadow.mkdir(parents=True)
            for entry in pathlib.Path(folder).iterdir():
                if entry.name != "nvcc":
                    (shadow / entry.name).symlink_to(entry)
            folder = str(shadow)
        folders.append(folder)
    (scratch / "cuda").mkdir(parents=True, exist_ok=True)
    env = {**env, "PATH": os.pathsep.join(folders), "CUDA_HOME": str(scratch / "cuda")}
    env.pop("CUDA_PATH", None)
    return env


def fake_commands(folder: pathlib.Path, **scripts: str) -> dict[str, str]:
    """An environment whose PATH is `folder` alone: `sh` and `make` linked from this machine,
    and a shell script per keyword (its name, its body; `_` in a name stands for `.`), for
    testing what make and the shell scripts do on a machine other than this one."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in ("sh", "make"):
        if not (folder / tool).exists():
            (folder / tool).symlink_to(shutil.which(tool))
    for name, body in scripts.items():
        exe = folder / name.replace("_", ".")
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(0o755)
    return {"PATH": str(folder), "HOME": os.environ.get("HOME", "/")}


def rel_error(actual, expected) -> float:
    """max |a - e| / max |e|: one scale for the whole tensor, so near-zero entries of a
    tensor with large ones are judged at the tensor's scale."""
    actual, expected = (
        torch.as_tensor(actual).detach().double(),
        torch.as_tensor(expected).detach().double(),
    )
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual - expected).abs().max() / scale)


def assert_rel(actual, expected, rtol, what=""):
    err = rel_error(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"


def pytest_configure(config):
    # Run A of `make test-rounding`: OpenCV's plain code instead of its SIMD and IPP paths,
    # as on a CPU where it dispatches differently (its float resize differs by 2.6e-6).
    if os.environ.get("SCOPS_FAST_TEST_OPENCV_PLAIN", "0") not in ("", "0"):
        import cv2

        cv2.setUseOptimized(False)


#: The files whose tests take longest, started first: `make test` runs the suite on
#: several workers (pytest-xdist, one file per worker at a time), and one of these
#: started last would leave the other workers idle while it ends alone.
SLOW_FILES = (
    "test_compile_cold.py",
    "test_wheel.py",
    "test_robust_properties.py",
    "test_backends.py",
    "test_robust_numerics.py",
)


def on_a_gpu(item) -> bool:
    """A test of the GPU check's selection: a shared-suite case of a GPU pair, or one
    marked `gpu`."""
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("target") if callspec is not None else None
    if target is not None and getattr(target, "device", None) == "cuda":
        return True
    return item.get_closest_marker("gpu") is not None


def pytest_collection_modifyitems(config, items):
    from backends_under_test import GPU_ONLY

    if GPU_ONLY:  # scripts/gpu_check.py: the GPU's minutes go to GPU cases only
        kept = [item for item in items if on_a_gpu(item)]
        config.hook.pytest_deselected(items=[item for item in items if not on_a_gpu(item)])
        items[:] = kept
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture
def nudge():
    """Moves a test's inputs by one ulp under SCOPS_FAST_TEST_ULP_NUDGE=1 (run A of
    `make test-rounding`), else returns them as they are: see tests/rounding.py."""
    return rounding.Nudge(rounding.enabled())


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
