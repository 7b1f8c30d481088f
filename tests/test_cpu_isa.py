"""The CPU kernels' instruction-set builds (scops_fast/_ext.py): the portable one holds no
AVX-512 instruction, each build this CPU can run passes the cpp suites, the builds agree,
and the choice is the CPU's best, forced by SCOPS_FAST_CPU_CAPABILITY or refused, and never
a build whose -march level needs a feature the OS does not report."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import hang_guard

import scops_fast
from scops_fast import _ext

HERE = pathlib.Path(__file__).resolve().parent
ISAS = [isa for isa in _ext.ISA_BUILDS if _ext._built(_ext.ISA_BUILDS[isa][0])]
CPU = torch.backends.cpu.get_cpu_capability()
#: Builds agree to this, relative to each tensor's largest entry (measured: 7e-7; the
#: wider registers sum in another order).
ISA_RTOL = 5e-6

pytestmark = pytest.mark.skipif(
    not ISAS, reason="the x86-64 builds are not here (a single-target build, or not x86-64)"
)


def runnable(isa: str) -> bool:
    return CPU in _ext.ISA_BUILDS[isa][1] and _ext.lacking_features(isa, _ext.cpu_flags()) is None


def env_for(isa: str) -> dict:
    return {**os.environ, _ext.CAPABILITY_VAR: isa}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed")
def test_the_portable_build_holds_no_avx512_instruction():
    lib = _ext._built("_C_avx2")
    text = subprocess.run(["objdump", "-d", lib], capture_output=True, text=True).stdout
    assert "vfmadd" in text  # it is the AVX2 + FMA build
    for mark in ("%zmm", "%k1", "vpternlog", "vscalef", "{1to"):
        assert mark not in text, mark


def test_the_best_build_runs_and_says_so():
    report = scops_fast.available_backends()
    best = next(isa for isa in ISAS if runnable(isa))
    if os.environ.get(_ext.CAPABILITY_VAR):
        pytest.skip(f"{_ext.CAPABILITY_VAR} is set in this process")
    assert report.details["cpp"].startswith(f"{best} kernels")


def runs_in_this_session(request, suites) -> bool:
    """Whether this pytest run itself runs every test of `suites`: each file given whole (or
    a folder above it, not a test id), and nothing deselected (-k, -m, --deselect, --lf)."""
    config = request.config
    if any(config.getoption(o, None) for o in ("keyword", "markexpr", "deselect", "lf")):
        return False
    given = [(config.invocation_params.dir / a).resolve() for a in config.args if "::" not in a]
    collected = {item.path for item in request.session.items}
    return all(
        HERE / s in collected and any((HERE / s).is_relative_to(g) for g in given) for s in suites
    )


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_each_build_this_cpu_runs_passes_the_cpp_suites(isa, request):
    if isa not in ISAS or not runnable(isa):
        pytest.skip(f"this CPU ({CPU}) cannot run the {isa} build")
    suites = ["test_backends.py", "test_cpp_concentration.py", "test_robust_determinism.py"]
    # A child for the build this process loaded would repeat what the suites do in this
    # run (24 s here); a child is needed only for a build this process did not load.
    if _ext.cpu_build()[0] == _ext.ISA_BUILDS[isa][0] and runs_in_this_session(request, suites):
        pytest.skip(f"this process runs the {isa} build: the suites of this run check it")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", *[str(HERE / s) for s in suites]]
        + ["-k", "not triton and not cuda_emu"],
        env=env_for(isa),
        capture_output=True,
        text=True,
        timeout=hang_guard(900),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout


def test_the_builds_agree(tmp_path):
    ran = [isa for isa in ISAS if runnable(isa)]
    if len(ran) < 2:
        pytest.skip(f"this CPU ({CPU}) runs only {ran}: nothing to compare")
    outs = {}
    for isa in ran:
        path = tmp_path / f"{isa}.npz"
        subprocess.run(
            [sys.executable, str(HERE / "isa_child.py"), str(path)],
            env=env_for(isa),
            check=True,
            timeout=hang_guard(300),
        )
        outs[isa] = np.load(path)
        assert str(outs[isa]["build"]).startswith(isa)
    a, b = (outs[isa] for isa in ran)
    for key in a.files:
        if key == "build":
            continue
        scale = max(float(np.abs(b[key]).max()), 1e-30)
        assert float(np.abs(a[key] - b[key]).max()) / scale <= ISA_RTOL, key


def test_a_forced_build_the_cpu_cannot_run_is_refused():
    code = "import scops_fast; print(scops_fast.available_backends().unavailable.get('cpp'))"
    env = {**env_for("avx512"), "ATEN_CPU_CAPABILITY": "avx2"}  # torch then reports AVX2
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "cannot run those kernels" in out
    env = {**os.environ, _ext.CAPABILITY_VAR: "sse4"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "expected one of" in out


V3 = frozenset(_ext.MARCH_FEATURES["avx2"]) | {"fpu", "sse4_2", "popcnt"}
V4 = V3 | frozenset(_ext.MARCH_FEATURES["avx512"])


def test_cpu_flags_are_read_from_the_os_report(tmp_path):
    report = tmp_path / "cpuinfo"
    report.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 bmi2\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 bmi2\n"
    )
    assert _ext.cpu_flags(report) == {"fpu", "avx2", "bmi2"}
    report.write_text("processor\t: 0\nfeatures\t: fp asimd\n")  # no x86 flags line
    assert _ext.cpu_flags(report) is None
    assert _ext.cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("torch_reports", "flags", "library", "named"),
    [
        ("AVX512", V4, "_C_avx512", None),
        ("AVX512", V4 - {"avx512cd"}, "_C_avx2", "avx512cd"),
        ("AVX2", V3, "_C_avx2", None),
        ("AVX2", V3 - {"bmi2"}, None, "bmi2"),  # AVX2 shown, BMI2 hidden (a VM's CPU model)
        ("AVX512", V4 - {"movbe", "f16c"}, None, "movbe, f16c"),
        ("AVX2", None, "_C_avx2", None),  # no OS report: torch's capability decides
        ("DEFAULT", V3, None, "has no AVX2"),
    ],
)
def test_a_build_runs_only_where_the_cpu_has_every_feature_of_its_level(
    monkeypatch, torch_reports, flags, library, named
):
    if len(ISAS) < 2:
        pytest.skip("needs both x86-64 builds")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: torch_reports)
    monkeypatch.setattr(_ext, "cpu_flags", lambda path=None: flags)
    monkeypatch.delenv(_ext.CAPABILITY_VAR, raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    chosen, why = _ext.cpu_build()
    assert chosen == library, why
    if named:
        assert named in why
    if chosen is None and named != "has no AVX2":
        assert "x86-64-v3" in why
    monkeypatch.setenv(_ext.CAPABILITY_VAR, "avx2")  # forcing the build does not bypass it
    chosen, why = _ext.cpu_build()
    assert (chosen is None) == (library is None), why


def test_a_cpu_lacking_a_feature_runs_the_reference_and_says_why():
    """In a fresh process, before anything loads: `cpp` is unavailable naming the feature,
    "auto" computes the reference's numbers, and no CPU library was loaded."""
    code = f"""
import torch
from scops_fast import _ext
_ext.cpu_flags = lambda path=None: frozenset({sorted(V3 - {"bmi2"})!r})
torch.backends.cpu.get_cpu_capability = lambda: "AVX2"
import scops_fast
from scops_fast import losses
report = scops_fast.available_backends()
print(report.unavailable["cpp"])
p = torch.rand(2, 4, 9, 7).softmax(1)
same = torch.equal(losses.concentration_loss(p), losses.concentration_loss(p, backend="reference"))
loaded = [lib for lib in torch.ops.loaded_libraries if "_C_avx" in lib]
print(same, loaded)
"""
    if len(ISAS) < 2:
        pytest.skip("needs both x86-64 builds")
    env = {k: v for k, v in os.environ.items() if k != _ext.CAPABILITY_VAR}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=hang_guard(120),
    ).stdout.splitlines()
    assert "lacks bmi2" in out[0] and "x86-64-v3" in out[0], out
    assert out[1] == "True []", out
