"""scripts/gpu_check.py, the first GPU run's one command: its plan, its time boxes (a step's
whole process group dies with it), and its record, written as each step ends so that a
killed run keeps what it had. `make test` also runs its CPU rehearsal (`--rehearse`)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402

on_a_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is here: scripts/gpu_check.py runs it for real"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited: its parent (the step's shell, killed too) never reaped it.
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


def wait_dead(pid: int, seconds: float = 10) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@on_a_gpu
def test_without_a_gpu_it_says_so_in_one_line():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines() == [gpu_check.NO_GPU]


def test_the_dry_runs_list_the_steps_in_order_of_value():
    dry = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--arch", "9.0"],
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["build", "suite", "bench"]
    build, suite, bench = lines
    for setting in ("SCOPS_FAST_EXTENSIONS=gpu", "FORCE_CUDA=1", "TORCH_CUDA_ARCH_LIST=9.0"):
        assert setting in build
    assert "--inplace" in build and sys.executable in build
    assert "SCOPS_FAST_TEST_GPU_ONLY=1" in suite and "tests/test_backends.py" in suite
    assert "gpu_bench.py" in bench and "--time-box" in bench
    rehearsal = subprocess.run(
        [sys.executable, str(SCRIPT), "--rehearse", "--dry-run"], capture_output=True, text=True
    )
    names = [line.split(" ")[0] for line in rehearsal.stdout.strip().splitlines()]
    assert names == ["build", "selection", "triton-aot", "bench-plan"]
    assert "--build-lib" in rehearsal.stdout and "--inplace" not in rehearsal.stdout


def test_the_steps_fit_the_budget():
    plan = gpu_check.gpu_steps("9.0", pathlib.Path("/nonexistent"))
    assert sum(step.limit_s for step in plan) <= gpu_check.BUDGET_S - 10  # versions


def test_a_step_over_its_limit_dies_with_its_whole_process_group(tmp_path):
    """A step that started a grandchild (as pytest or a compiler would) and ignores SIGTERM
    is killed, grandchild included, and its log keeps what it printed."""
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sleep 60 & echo $! > {pids}; echo $$ >> {pids}; echo started; sleep 60"
    step = gpu_check.Step("slow", 1.5, ["bash", "-c", script], "sleeps")
    out = open(os.devnull, "w")
    t0 = time.monotonic()
    result = gpu_check.run_step(step, tmp_path, step.limit_s, echo=out)
    assert result["status"] == "timeout" and "killed after" in result["why"]
    assert time.monotonic() - t0 < 15
    grandchild, shell = map(int, pids.read_text().split())
    assert wait_dead(grandchild) and wait_dead(shell)
    assert "started" in (tmp_path / "slow.log").read_text()


def test_each_step_is_recorded_as_it_ends_and_a_failed_build_stops_the_run(tmp_path):
    """The second step reads the record while it runs: the first step's result is already
    there. A failed build marks the steps after it skipped."""
    check = tmp_path / "check.json"
    reader = (
        "import json, sys; d = json.load(open(sys.argv[1])); "
        "assert d['steps']['first']['status'] == 'passed', d; "
        "assert d['steps']['second']['status'] == 'running', d; print('seen')"
    )
    plan = [
        gpu_check.Step("first", 30, [sys.executable, "-c", "print('one')"], "prints"),
        gpu_check.Step("second", 30, [sys.executable, "-c", reader, str(check)], "reads"),
        gpu_check.Step("third", 30, [sys.executable, "-c", "raise SystemExit(3)"], "fails"),
    ]
    record = gpu_check.Record(tmp_path, "test", {"device": "x"})
    assert gpu_check.run(plan, record, tmp_path, 100) is False
    steps = json.loads(check.read_text())["steps"]
    assert [steps[n]["status"] for n in ("first", "second", "third")] == [
        "passed",
        "passed",
        "failed",
    ]
    assert steps["third"]["why"] == "exit code 3"
    assert "seen" in (tmp_path / "second.log").read_text()
    assert "| third | failed: exit code 3 |" in (tmp_path / "check.md").read_text()

    build = [gpu_check.Step("build", 30, [sys.executable, "-c", "raise SystemExit(1)"], "b")]
    later = [gpu_check.Step("suite", 30, [sys.executable, "-c", "pass"], "s")]
    record = gpu_check.Record(tmp_path, "test", {})
    assert gpu_check.run(build + later, record, tmp_path, 100) is False
    assert record.data["steps"]["suite"] == {"status": "skipped", "why": "the build failed"}


def test_a_verifier_fails_a_step_that_exited_zero(tmp_path):
    step = gpu_check.Step(
        "selection", 30, [sys.executable, "-c", "print('x::y[triton-cpu-1]')"], "collects"
    )
    step.verify = gpu_check.selection_problems
    result = gpu_check.run_step(step, tmp_path, 30, echo=open(os.devnull, "w"))
    assert result["status"] == "failed" and "outside the GPU pairs" in result["why"]


def test_a_terminated_check_kills_the_running_step_and_says_so_in_its_record(tmp_path):
    pid_file = tmp_path / "step.pid"
    driver = tmp_path / "driver.py"
    driver.write_text(
        f"import pathlib, signal, sys\nsys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "import gpu_check\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, gpu_check._interrupt)\n"
        "step = gpu_check.Step('suite', 60, ['bash', '-c', "
        f"'echo $$ > {pid_file}; sleep 60'], 'sleeps')\n"
        "record = gpu_check.Record(out, 'test', {})\n"
        "try:\n    gpu_check.run([step], record, out, 100)\n"
        "except gpu_check.Interrupted:\n    sys.exit(130)\n"
    )
    proc = subprocess.Popen([sys.executable, str(driver), str(tmp_path)])
    end = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < end, "the step never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert wait_dead(int(pid_file.read_text()))
    step = json.loads((tmp_path / "check.json").read_text())["steps"]["suite"]
    assert step["status"] == "interrupted" and step["why"] == "SIGTERM"


def test_the_benchmark_gets_what_the_other_steps_left(tmp_path):
    """The last step's limit is the budget's rest, and it is told its time box (its limit
    less the margin it needs to write its files)."""
    argv_file = tmp_path / "argv"
    script = f"import sys, pathlib; pathlib.Path({str(argv_file)!r}).write_text(sys.argv[-1])"
    plan = [
        gpu_check.Step("build", 30, [sys.executable, "-c", "pass"], "b"),
        gpu_check.Step("bench", 10, [sys.executable, "-c", script], "t", takes_the_rest=True),
    ]
    record = gpu_check.Record(tmp_path, "test", {})
    assert gpu_check.run(plan, record, tmp_path, 100) is True
    box = int(argv_file.read_text())
    assert 100 - gpu_check.BENCH_MARGIN_S - 10 <= box <= 100 - gpu_check.BENCH_MARGIN_S
    assert record.data["steps"]["bench"]["limit_s"] > 80
