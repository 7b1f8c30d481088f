"""The first GPU run, in one command of at most 8 minutes: `python3 scripts/gpu_check.py
--out DIR` (or `make gpu-check OUT=DIR`), from a fresh checkout, on the GPU machine's own
stack.

It uses the Python it runs under and the packages it finds: it creates no environment,
installs nothing and needs no network. In order, most valuable numbers first:

  versions  printed first, and written to DIR/versions.json
  build     the CUDA kernels for this GPU's architecture and the CPU library that defines
            the ops' schemas, in place, ninja on every core (SCOPS_FAST_EXTENSIONS=gpu)
  suite     the shared suite's GPU pairs only: tests/test_backends.py for cuda, triton
            (compiled, not interpreted) and the reference on CUDA tensors, and the CUDA
            library's registration (SCOPS_FAST_TEST_GPU_ONLY=1)
  bench     benchmarks/gpu_bench.py: each op's time, bandwidth and peak memory against
            eager, torch.compile and a device copy, then the training step

Each step runs in a process group of its own under a time limit; the group is killed when
the step runs over, or when this script is interrupted. Each step writes DIR/<step>.log as
it goes. DIR/check.json and DIR/check.md are rewritten as each step starts and ends, so a
run killed at any moment leaves every finished step's result and the name of the one that
was running.

`--rehearse` runs the CPU rehearsal of the same check (`make test` runs it): the build
command (into DIR/build-lib, leaving the checkout's libraries alone; `--arch`, by default
the architectures `make install` compiles, sm_80 and sm_90, so that make install's objects
are reused), the suite's selection collected with torch faking one GPU and checked (GPU
pairs only, none emulated or interpreted, EXPECTED_GPU_TESTS of them), every Triton
kernel compiled ahead of time for sm_90, and the benchmark's plan. `--dry-run` prints the
steps. Without a GPU and without --rehearse it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
#: The suite's GPU selection (scripts/gpu_rehearsal_plugin.py collects it without a GPU):
#: a test added to tests/test_backends.py changes it, and the GPU's time box with it.
EXPECTED_GPU_TESTS = 425
GPU_TARGET_IDS = ("cuda-cuda", "triton-cuda", "reference-cuda")
#: Tests of the selection that are not shared-suite cases (marked `gpu`).
GPU_MARKED = (
    "tests/test_cuda_build.py::test_cuda_library_loads_and_registers_every_op",
    "tests/test_kernel_edges.py::test_cuda_on_a_gpu_empty_batch_and_beyond_the_grid_y_limit",
)
SUITE_FILES = ["tests/test_backends.py", "tests/test_cuda_build.py", "tests/test_kernel_edges.py"]
#: The benchmark stops starting rows this long before its step's limit, to write its files.
BENCH_MARGIN_S = 15
NO_GPU = "gpu-check: skipped, no CUDA device is visible to torch on this machine."


@dataclasses.dataclass
class Step:
    name: str
    limit_s: float
    command: list[str]
    measures: str
    env: dict = dataclasses.field(default_factory=dict)
    #: Reads the step's log after a zero exit; returns why the step failed, or None.
    verify: Callable[[str], str | None] | None = None
    #: Why the step cannot run here (recorded as skipped), or None.
    skip: str | None = None
    #: The last step takes what the others left of the budget, and is told its time box.
    takes_the_rest: bool = False

    def command_for(self, limit: float) -> list[str]:
        if not self.takes_the_rest:
            return self.command
        return [*self.command, "--time-box", str(int(max(limit - BENCH_MARGIN_S, 1)))]


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def child_env(extra: dict) -> dict:
    # The checkout itself is the package: nothing is installed on the GPU machine.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}
    return env


def sm_names(arch: str) -> str:
    return ", ".join("sm_" + a.strip().replace(".", "") for a in arch.split(";") if a.strip())


def build_step(arch: str, out: pathlib.Path, rehearse: bool, limit: float) -> Step:
    py = sys.executable
    where = ["--build-lib", str(out / "build-lib")] if rehearse else ["--inplace"]
    env = {
        "SCOPS_FAST_EXTENSIONS": "gpu",
        "FORCE_CUDA": "1",
        "TORCH_CUDA_ARCH_LIST": arch,
        "SCOPS_FAST_STRICT_BUILD": "1",
        "MAX_JOBS": str(os.cpu_count() or 1),
    }
    return Step(
        "build",
        limit,
        [py, "setup.py", "-q", "build_ext", *where],
        f"compiles the CUDA kernels for {sm_names(arch)} and the CPU library of the schemas",
        env,
    )


def gpu_steps(arch: str, out: pathlib.Path) -> list[Step]:
    py = sys.executable
    suite = [py, "-m", "pytest", *SUITE_FILES, "-v", "-p", "no:cacheprovider", "-rfE"]
    suite += ["--durations=15", f"--junitxml={out / 'suite.xml'}"]
    bench = [py, "benchmarks/gpu_bench.py", "--size", "celeba", "--out", str(out / "bench.json")]
    return [
        build_step(arch, out, rehearse=False, limit=180),
        Step(
            "suite",
            150,
            suite,
            f"{EXPECTED_GPU_TESTS} GPU cases: every op of cuda, triton (compiled) and the "
            "reference on CUDA against the float64 CPU reference",
            {"SCOPS_FAST_TEST_GPU_ONLY": "1"},
            verify=pytest_passed,
        ),
        Step(
            "bench",
            120,
            bench,
            "each op's ms, GB/s against a device copy and peak memory, the training step, "
            "then torch.compile's rows, as far as the time left allows",
            takes_the_rest=True,
        ),
    ]


def missing_toolkit() -> str | None:
    """Why setup.py would find no nvcc (its lookup: CUDA_HOME or CUDA_PATH, then
    /usr/local/cuda, then nvcc on PATH), or None. FORCE_CUDA=0 (`make test FORCE_CUDA=0`)
    asks for no CUDA compile at all."""
    if os.environ.get("FORCE_CUDA") == "0":
        return "FORCE_CUDA=0"
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            home = pathlib.Path(os.environ[var])
            return None if (home / "bin" / "nvcc").exists() else f"{var}={home} holds no bin/nvcc"
    if pathlib.Path("/usr/local/cuda/bin/nvcc").exists() or shutil.which("nvcc"):
        return None
    return "no CUDA toolkit (nvcc) here"


def rehearsal_steps(arch: str, out: pathlib.Path) -> list[Step]:
    py = sys.executable
    build = build_step(arch, out, rehearse=True, limit=420)
    build.skip = missing_toolkit()
    collect = [py, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    collect += ["-p", "gpu_rehearsal_plugin", *SUITE_FILES]
    scripts = os.pathsep.join([str(ROOT), str(ROOT / "scripts")])
    # The rehearsal compiles for sm_90 without TRITON_INTERPRET, which the caller may set.
    aot_env = {"TRITON_INTERPRET": "0"}
    return [
        build,
        Step(
            "selection",
            120,
            collect,
            "collects the suite's GPU selection with one GPU faked, and checks it",
            {"SCOPS_FAST_TEST_GPU_ONLY": "1", "PYTHONPATH": scripts},
            verify=selection_problems,
        ),
        Step(
            "triton-aot",
            300,
            [py, "-m", "scops_fast.triton_kernels.aot", "--arch", "90"],
            "compiles every Triton kernel ahead of time for sm_90",
            aot_env,
            verify=aot_problems,
        ),
        Step(
            "bench-plan",
            60,
            [py, "benchmarks/gpu_bench.py", "--plan", "--time-box", "105"],
            "lists the benchmark's cases and its time plan",
            verify=plan_problems,
        ),
    ]


def pytest_passed(log: str) -> str | None:
    last = [line for line in log.splitlines() if " in " in line and "=" in line]
    if not last or " passed" not in last[-1] or "failed" in last[-1] or "error" in last[-1]:
        return "pytest reported no clean pass"
    return None


def selection_problems(log: str) -> str | None:
    ids = [line.strip() for line in log.splitlines() if "::" in line]
    odd = [
        i
        for i in ids
        if i not in GPU_MARKED and not any(f"[{t}-" in i or f"[{t}]" in i for t in GPU_TARGET_IDS)
    ]
    if odd:
        return f"{len(odd)} tests outside the GPU pairs, e.g. {odd[:3]}"
    emulated = [i for i in ids if "cuda_emu" in i or "-cpu" in i]
    if emulated:
        return f"emulated or CPU cases selected: {emulated[:3]}"
    if "TRITON_INTERPRET=None" not in log or "INTERPRETER_HERE=False" not in log:
        return "Triton's interpreter would be on"
    for target in GPU_TARGET_IDS:
        if not any(target in i for i in ids):
            return f"no {target} cases"
    if len(ids) != EXPECTED_GPU_TESTS:
        return (
            f"{len(ids)} tests selected, EXPECTED_GPU_TESTS is {EXPECTED_GPU_TESTS}: when the "
            "suite changed on purpose, update it (and check the suite's time box)"
        )
    return None


def aot_problems(log: str) -> str | None:
    ok = log.count(" ok: ")
    return None if ok == 10 else f"{ok} of 10 Triton kernels compiled for sm_90"


def plan_problems(log: str) -> str | None:
    # Nothing is installed on the GPU machine: the checkout is the package.
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from bench_losses import OPS

    missing = [op for op in OPS if op not in log]
    return f"the plan lacks {missing}" if missing else None


class Record:
    """DIR/check.json and DIR/check.md, rewritten whole (atomically) after every change."""

    def __init__(self, out: pathlib.Path, mode: str, info: dict):
        self.out = out
        self.data = {
            "mode": mode,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "budget_s": BUDGET_S,
            "versions": info,
            "finished": False,
            "steps": {},
        }
        self.save()

    def step(self, name: str, **fields):
        self.data["steps"].setdefault(name, {}).update(fields)
        self.save()

    def save(self):
        write_atomic(self.out / "check.json", json.dumps(self.data, indent=1) + "\n")
        write_atomic(self.out / "check.md", markdown(self.data))


def write_atomic(path: pathlib.Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(data: dict) -> str:
    v = data["versions"]
    lines = [
        f"# GPU check ({data['mode']}), started {data['started']}",
        "",
        f"Device: {v.get('device')}; torch {v.get('torch')} (CUDA {v.get('torch_cuda')}), "
        f"triton {v.get('triton')}, Python {v.get('python')}; nvcc {v.get('nvcc')}",
        "",
        "| step | status | seconds | limit | measures | log |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, s in data["steps"].items():
        took = f"{s['seconds']:.0f}" if "seconds" in s else ""
        status = s.get("status", "")
        if s.get("why"):
            status += f": {s['why']}"
        lines.append(
            f"| {name} | {status} | {took} | {s.get('limit_s', 0):.0f} | "
            f"{s.get('measures', '')} | {s.get('log', '')} |"
        )
    lines += ["", "Finished." if data["finished"] else "Not finished (still running or killed)."]
    return "\n".join(lines) + "\n"


def versions(gpu: bool) -> dict:
    info = {"python": sys.version.split()[0], "executable": sys.executable}
    for name in ("torch", "triton", "torchvision", "numpy", "pytest"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # reported, not fatal: the steps say what it costs
            info[name] = f"missing ({type(exc).__name__})"
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cpus"] = os.cpu_count()
    if gpu:
        props = torch.cuda.get_device_properties(0)
        info["device"] = props.name
        info["capability"] = f"{props.major}.{props.minor}"
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        info["device"] = "none (rehearsal on the CPU)"
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30)
        info["nvcc"] = nvcc.stdout.strip().splitlines()[-1] if nvcc.stdout.strip() else "?"
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvcc"] = f"missing ({type(exc).__name__})"
    return info


class Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group, SIGKILL to what is left after 5 s: a
    step's children (pytest's workers, compilers, a benchmark's child) must not go on
    competing for the GPU."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader has exited; its children may not have.
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


def verified(verify: Callable[[str], str | None], log: str) -> str | None:
    try:
        return verify(log)
    except Exception as exc:  # a broken check fails its step, not the whole run
        return f"the check of the log raised {type(exc).__name__}: {exc}"


def run_step(step: Step, out: pathlib.Path, limit: float, echo=sys.stdout) -> dict:
    """Runs one step in a new process group, its output into DIR/<name>.log (echoed as it
    comes); returns {status, returncode, seconds, why}."""
    log_path = out / f"{step.name}.log"
    t0 = time.monotonic()
    status, code, why = "failed", None, ""
    with open(log_path, "wb") as log, open(log_path, "rb") as tail:
        proc = subprocess.Popen(
            step.command_for(limit),
            cwd=ROOT,
            env=child_env(step.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() - t0 > limit:
                        kill_group(proc)
                        status, why = "timeout", f"killed after {limit:.0f} s"
                        break
                finally:
                    echo.write(tail.read().decode(errors="replace"))
                    echo.flush()
        except BaseException:
            kill_group(proc)
            raise
        kill_group(proc)  # anything the step left running in its group
    if status != "timeout":
        text = log_path.read_text(errors="replace")
        if code != 0:
            status, why = "failed", f"exit code {code}"
        elif step.verify is not None and (problem := verified(step.verify, text)) is not None:
            status, why = "failed", problem
        else:
            status = "passed"
    return {
        "status": status,
        "returncode": code,
        "seconds": round(time.monotonic() - t0, 1),
        "why": why,
    }


def run(plan: list[Step], record: Record, out: pathlib.Path, budget: float) -> bool:
    """Runs the steps in order within `budget` seconds; False if any failed. A failed build
    ends the run: nothing after it has kernels to test."""
    start, ok = time.monotonic(), True
    for i, step in enumerate(plan):
        left = budget - (time.monotonic() - start)
        if left < 5:
            for later in plan[i:]:
                record.step(later.name, status="skipped", why="the budget is spent")
            return False
        limit = left if step.takes_the_rest else min(step.limit_s, left)
        if step.skip is not None:
            record.step(step.name, status="skipped", why=step.skip, measures=step.measures)
            print(f"gpu-check: {step.name} skipped: {step.skip}", flush=True)
            continue
        print(f"gpu-check: {step.name} (at most {limit:.0f} s): {step.measures}", flush=True)
        record.step(
            step.name,
            status="running",
            limit_s=limit,
            measures=step.measures,
            log=f"{step.name}.log",
            command=" ".join(step.command_for(limit)),
        )
        try:
            result = run_step(step, out, limit)
        except Interrupted as exc:
            record.step(step.name, status="interrupted", why=str(exc))
            raise
        record.step(step.name, **result)
        print(
            f"gpu-check: {step.name} {result['status']} in {result['seconds']:.0f} s "
            f"{result['why']}".rstrip(),
            flush=True,
        )
        if result["status"] != "passed":
            ok = False
            if step.name == "build":
                for later in plan[i + 1 :]:
                    record.step(later.name, status="skipped", why="the build failed")
                return False
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "gpu-check")
    parser.add_argument("--rehearse", action="store_true", help="the CPU rehearsal")
    parser.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST for the build")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    parser.add_argument("--steps", default=None, help="run only these steps (comma-separated)")
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.rehearse
    if not gpu and not args.rehearse and not args.dry_run:
        print(NO_GPU)
        return 0
    if gpu:
        major, minor = torch.cuda.get_device_capability()
        arch = args.arch or f"{major}.{minor}"
    else:
        arch = args.arch or "8.0;9.0"
    out = args.out.resolve()
    plan = rehearsal_steps(arch, out) if args.rehearse else gpu_steps(arch, out)
    if args.steps:
        names = args.steps.split(",")
        unknown = sorted(set(names) - {step.name for step in plan})
        if unknown:
            parser.error(f"--steps: unknown {unknown}; this mode has {[s.name for s in plan]}")
        plan = [step for step in plan if step.name in names]
    if args.dry_run:
        for step in plan:
            env = " ".join(f"{k}={v}" for k, v in step.env.items())
            command = " ".join(step.command_for(step.limit_s))
            print(f"{step.name} ({step.limit_s:.0f} s): {env} {command}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    info = versions(gpu)
    print("gpu-check: " + json.dumps(info), flush=True)
    write_atomic(out / "versions.json", json.dumps(info, indent=1) + "\n")
    record = Record(out, "rehearsal" if args.rehearse else "gpu", info)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ok = run(plan, record, out, BUDGET_S if gpu else 3 * BUDGET_S)
    except (Interrupted, KeyboardInterrupt):
        print("gpu-check: interrupted; the record holds what finished", flush=True)
        return 130
    record.data["finished"] = True
    record.save()
    print(f"gpu-check: {'passed' if ok else 'FAILED'}; record in {out / 'check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
