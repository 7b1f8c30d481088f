"""Triton's CPU cases run through its interpreter, which must be switched on before Triton
decorates anything (its own standard library included), so before `triton.language` is
first imported. Importing this module switches it on where this process can still have it
and no GPU is seen (on a GPU, Triton compiles, and the CPU cases run in a child). A test
module imports it before anything that may import triton.

In a full run an earlier module (test_models, through torchvision) has usually imported
triton already: the interpreted cases then skip (`SKIPPED_HERE`) and a child pytest,
started with the variable set, runs them (`run_in_a_fresh_interpreter`)."""

import os
import pathlib
import subprocess
import sys

import torch
from conftest import hang_guard


def _triton_imported_without_interpreter() -> bool:
    lang = sys.modules.get("triton.language")
    if lang is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(lang.standard.sum, InterpretedFunction)


#: Whether this process runs the interpreted cases itself.
INTERPRETER_HERE = os.environ.get("TRITON_INTERPRET") == "1" or (
    not torch.cuda.is_available() and not _triton_imported_without_interpreter()
)
if INTERPRETER_HERE:
    os.environ["TRITON_INTERPRET"] = "1"

SKIPPED_HERE = "triton was imported without its interpreter: the child test runs these"


def run_in_a_fresh_interpreter(test_file: str, selection: str, markexpr: str, timeout: float):
    """The cases of `test_file` that `-k selection` (and the parent's `-m markexpr`) picks,
    in a child pytest with the interpreter on from the start: all pass, none skip."""
    cmd = [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider"]
    cmd += ["-k", selection] + (["-m", markexpr] if markexpr else [])
    done = subprocess.run(
        cmd,
        cwd=pathlib.Path(__file__).resolve().parents[1],
        env=dict(os.environ, TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=hang_guard(timeout),
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last, done.stdout[-2000:]
