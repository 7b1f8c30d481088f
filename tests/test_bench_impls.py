"""Which implementations `pytest benchmarks/ --benchmark` times: eager, torch.compile and the
backends meant to be used; a backend labelled for checking only (its module's
`checking_only()`) only when named with --impl. No timing here: the case list is built or
collected, never run."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from scops_fast import available_backends
from scops_fast._dispatch import BACKEND_MODULES, BACKENDS, BackendReport

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_losses  # noqa: E402


def label(name: str):
    module = importlib.import_module(BACKEND_MODULES[name])
    return getattr(module, "checking_only", lambda: None)()


def test_only_the_emulation_is_labelled_for_checking_only():
    assert label("cuda_emu")
    for name in ("reference", "cpp", "cuda"):
        assert label(name) is None, name


def test_triton_is_for_checking_only_when_interpreted(monkeypatch):
    pytest.importorskip("triton")
    from scops_fast import triton_kernels

    monkeypatch.setattr(triton_kernels, "kernel_mode", lambda: "interpreted")
    assert label("triton")
    monkeypatch.setattr(triton_kernels, "kernel_mode", lambda: "compiled")
    assert label("triton") is None


def every_backend_usable() -> BackendReport:
    """A report as on a machine where every backend runs, with the modules' own labels."""
    usable = {name: ("cpu",) for name in BACKENDS}
    checking = {name: label(name) for name in ("cuda_emu",)}
    return BackendReport(usable, {}, checking_only=checking)


def test_default_cases_leave_checking_only_backends_out():
    report = every_backend_usable()
    assert bench_losses.case_impls("", report) == ("eager", "compile", "cpp", "triton", "cuda")
    assert bench_losses.case_impls("cuda_emu", report)[-1] == "cuda_emu"
    assert bench_losses.case_impls(" cuda_emu,cpp,cuda_emu ", report).count("cuda_emu") == 1


def test_unknown_or_unusable_impl_is_a_usage_error_naming_the_option():
    with pytest.raises(pytest.UsageError, match="--impl: unknown implementation 'bogus'"):
        bench_losses.case_impls("bogus", every_backend_usable())
    report = BackendReport({"reference": ("cpu",)}, {"cuda_emu": "not built"})
    with pytest.raises(pytest.UsageError, match="--impl: backend 'cuda_emu' .*not built"):
        bench_losses.case_impls("cuda_emu", report)


def collected_impls(*args) -> set:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/bench_losses.py", "--collect-only", "-q"]
        + ["-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "test_forward_backward[" in line]
    assert ids, proc.stdout[-2000:]
    parts = {part for i in ids for part in i.partition("[")[2].rstrip("]").split("-")}
    return parts & {"eager", "compile", "original", *BACKENDS}


def test_the_collected_default_list_has_no_checking_only_backend():
    """The command itself, collected in a child: what it would time here."""
    report = available_backends()
    impls = collected_impls()
    assert {"eager", "compile"} <= impls
    assert not impls & set(report.checking_only), impls
    if "cuda_emu" not in report:
        pytest.skip(f"cuda_emu is not built here ({report.unavailable.get('cuda_emu')})")
    assert impls | {"cuda_emu"} == collected_impls("--impl", "cuda_emu")
