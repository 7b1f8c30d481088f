"""Run a command of this venv's Python on an emulated x86-64 CPU without AVX-512.

    python scripts/no_avx512.py [--qemu qemu-x86_64] [--native-children] -- -m pytest tests -q

Our CI runs on the machine it lands on; users' machines include x86-64 CPUs with AVX2 and
FMA but no AVX-512. QEMU's user mode with `-cpu max` is such a CPU: its code generator has
AVX2 and FMA and no AVX-512, and CPUID says so, so torch reports AVX2, MKL and oneDNN pick
their AVX2 code, and our loader picks the avx2 build. Every instruction the Python process
runs is emulated (about 8x slower), so an AVX-512 instruction anywhere in it fails at once.

QEMU 8 or later is needed: 7.2 (Debian 12's own) miscomputes AVX2 gathers and crashes in
torch's grid_sample. On Debian 12: `apt-get install -t bookworm-backports qemu-user` (with
bookworm-backports in the apt sources).

QEMU cannot follow an exec of a native binary, so a child process would run natively. A
child Python of this venv is emulated too: a `sitecustomize` (on PYTHONPATH) points
`sys.executable` of this venv's Python at a wrapper that starts it under QEMU, so the tests
that start a fresh Python (`[sys.executable, ...]`) and multiprocessing get the same CPU.
Other programs (compilers, a fresh venv's Python, Chromium) run natively, held to AVX2 where
they listen: ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2,
and compiler wrappers that read `-march=native` (torch.compile's C++ kernels) as x86-64-v3.
`--native-children` runs every child natively (faster; a test comparing a child's floats
with the emulated parent's then compares two CPUs). SCOPS_FAST_TEST_SLOWDOWN=10 tells the
tests' hang guards that everything runs about ten times slower.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MIN_QEMU = (8, 0)
#: The environment of the emulated process and its children: programs that run natively are
#: held to AVX2 where they listen, and the tests' hang guards allow for the emulation.
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "SCOPS_FAST_TEST_SLOWDOWN": "10",
}
PROBE = (
    "import torch, scops_fast; "
    "print(torch.backends.cpu.get_cpu_capability()); "
    "print(scops_fast.available_backends().details.get('cpp'))"
)


def qemu_version(qemu: str) -> tuple[int, int]:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version (\d+)\.(\d+)", out)
    if match is None:
        raise SystemExit(f"--qemu: cannot read a version from `{qemu} --version`: {out!r}")
    return int(match[1]), int(match[2])


def write_script(path: Path, body: str) -> None:
    """An executable /bin/sh script at `path`."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def emulate_children(emulated: list[str], folder: Path) -> dict:
    """The environment that sends a child Python of this venv through `emulated` as well."""
    wrapper = folder / "python"
    write_script(wrapper, f'exec {shlex.join(emulated)} "$@"\n')
    # Only this venv's Python is redirected: a fresh venv's (tests/test_wheel.py) is not.
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        f"if sys.executable == {sys.executable!r}:\n"
        f"    sys.executable = {str(wrapper)!r}\n"
    )
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), path) if p)}


#: Compilers that an emulated process may run natively (torch.compile's C++ backend).
COMPILERS = ("gcc", "g++", "cc", "c++")


def compilers_for_the_emulated_cpu(folder: Path) -> dict:
    """The environment whose compilers target the emulated CPU: Inductor compiles its
    kernels with `-march=native`, which the native compiler reads off the host (AVX-512
    here), so the emulated process that loads them would die of SIGILL where a real AVX2
    machine's compiler would have targeted AVX2. Wrappers ahead on PATH turn
    `-march=native` into `-march=x86-64-v3` (AVX2, FMA) and run the real compiler."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name in COMPILERS:
        real = shutil.which(name)
        if real is None:
            continue
        write_script(
            bin_dir / name,
            'for a do shift; case "$a" in -march=native) set -- "$@" -march=x86-64-v3 ;; '
            '*) set -- "$@" "$a" ;; esac; done\n'
            f'exec {shlex.quote(real)} "$@"\n',
        )
    return {"PATH": os.pathsep.join((str(bin_dir), os.environ.get("PATH", "")))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu", default="qemu-x86_64", help="QEMU's x86-64 user-mode binary")
    parser.add_argument(
        "--native-children", action="store_true", help="run child Pythons natively (faster)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="arguments for python")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("command: give the arguments for python after --, e.g. -- -m pytest tests")
    qemu = shutil.which(args.qemu)
    if qemu is None:
        raise SystemExit(
            f"--qemu: {args.qemu!r} is not on the PATH; on Debian 12: "
            "apt-get install -t bookworm-backports qemu-user"
        )
    version = qemu_version(qemu)
    if version < MIN_QEMU:
        raise SystemExit(
            f"--qemu: {qemu} is QEMU {version[0]}.{version[1]}; {MIN_QEMU[0]}.{MIN_QEMU[1]} or "
            "later is needed (7.2 miscomputes AVX2 gathers and crashes in torch's grid_sample)"
        )
    emulated = [qemu, "-cpu", "max", sys.executable]
    with tempfile.TemporaryDirectory(prefix="no_avx512_") as folder:
        env = {**os.environ, **AVX2_ENV, **compilers_for_the_emulated_cpu(Path(folder))}
        if not args.native_children:
            env.update(emulate_children(emulated, Path(folder)))
        # The probe is a child of an emulated Python, as the tests' children are, and is not
        # told to hold to AVX2: what it reports is what its CPU says.
        probe = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {PROBE!r}])"
        untold = {k: v for k, v in env.items() if k != "ATEN_CPU_CAPABILITY"}
        seen = subprocess.run(
            [*emulated, "-c", probe], env=untold, capture_output=True, text=True, check=True
        ).stdout.split("\n")
        if not args.native_children and (seen[0] != "AVX2" or not seen[1].startswith("avx2")):
            raise SystemExit(f"a child Python does not see the AVX2-only CPU expected: {seen}")
        children = (
            f"native (their CPU reports {seen[0]}; ATEN_CPU_CAPABILITY holds torch to AVX2)"
            if args.native_children
            else f"emulated too (torch reports {seen[0]}; cpp: {seen[1]})"
        )
        print(f"QEMU {version[0]}.{version[1]}, -cpu max; child Pythons: {children}", flush=True)
        return subprocess.run([*emulated, *command], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
