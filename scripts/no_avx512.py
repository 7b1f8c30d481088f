"""Run a command of this venv's Python on an emulated x86-64 CPU without AVX-512.

    python scripts/no_avx512.py [--qemu qemu-x86_64] -- -m pytest tests -q

Our CI runs on the machine it lands on; users' machines include x86-64 CPUs with AVX2 and
FMA but no AVX-512. QEMU's user mode with `-cpu max` is such a CPU: its code generator has
AVX2 and FMA and no AVX-512, and CPUID says so, so torch reports AVX2, MKL and oneDNN pick
their AVX2 code, and our loader picks the avx2 build. Every instruction the Python process
runs is emulated (about 8x slower), so an AVX-512 instruction anywhere in it fails at once.

QEMU 8 or later is needed: 7.2 (Debian 12's own) miscomputes AVX2 gathers and crashes in
torch's grid_sample. On Debian 12: `apt-get install -t bookworm-backports qemu-user` (with
bookworm-backports in the apt sources).

Child processes (the tests that start a fresh Python, compilers) run natively: QEMU cannot
follow an exec of a native binary. They inherit ATEN_CPU_CAPABILITY=avx2,
MKL_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2, so they take the same code paths,
though an AVX-512 instruction outside those libraries would go unnoticed there.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

MIN_QEMU = (8, 0)
#: What the child processes are held to (they run natively).
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu", default="qemu-x86_64", help="QEMU's x86-64 user-mode binary")
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
    env = {**os.environ, **AVX2_ENV}
    emulated = [qemu, "-cpu", "max", sys.executable]
    seen = subprocess.run(
        [*emulated, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    if seen[0] != "AVX2" or not seen[1].startswith("avx2"):
        raise SystemExit(f"the emulated CPU is not the AVX2 one expected: {seen}")
    print(f"QEMU {version[0]}.{version[1]}, -cpu max: torch reports {seen[0]}; cpp: {seen[1]}")
    sys.stdout.flush()
    return subprocess.run([*emulated, *command], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
