"""Ctrl-C and SIGTERM stop a training run after its step and checkpoint it there: in one
process with reader processes, the signal sent to the whole process group (as SLURM sends it);
and under torchrun, where one rank signalled is enough for every rank to stop after the same
step (scops_fast.train.stopping)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import hang_guard
from train_helpers import child_env, free_port, join_local_group, spawn_ranks, tiny_config

from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.distributed import ProcessInfo
from scops_fast.train.stopping import GracefulStop


def long_run(tmp_path, **overrides) -> list[str]:
    """Arguments of a run far longer than the test: it ends only by being stopped."""
    config = tmp_path / "tiny.json"
    settings = {"steps": 5000, "log_every": 1, "checkpoint_every": 10000, **overrides}
    config.write_text(json.dumps(tiny_config(**settings).to_dict()))
    return ["--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"]


def started(cmd: list[str], **kwargs) -> subprocess.Popen:
    """The command in a process group of its own, killed whole after a hang guard's time (so
    that a read of its output that would wait for ever ends), and at the end of the test."""
    proc = subprocess.Popen(cmd, env=child_env(threads=1), start_new_session=True, **kwargs)
    guard = threading.Timer(hang_guard(180), _kill_group, (proc,))
    guard.daemon = True
    guard.start()
    return proc


def _kill_group(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def read_until_step(proc, step: int) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(f"step {step}/"):
            return lines
    raise AssertionError(f"the run ended before step {step}:\n" + "".join(lines))


ONE_PROCESS = ProcessInfo(0, 1, torch.device("cpu"))


def test_the_handler_waits_for_the_step_and_a_second_ctrl_c_interrupts_at_once():
    assert threading.current_thread() is threading.main_thread()  # where signals arrive
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    # As in a terminal: a suite run in the background inherits SIGINT ignored, left so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stopping = GracefulStop()
    try:
        assert not stopping.should_stop(ONE_PROCESS)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # asks the same again: no exception
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C also only asks
        assert stopping.should_stop(ONE_PROCESS) and stopping.stopped == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stopping.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_hangup_stops_the_run():
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        stopping = GracefulStop()
        os.kill(os.getpid(), signal.SIGHUP)
        assert stopping.should_stop(ONE_PROCESS) and stopping.stopped == signal.SIGHUP
        stopping.restore()
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGHUP], ids=["background job (cmd &)", "nohup"]
)
def test_a_signal_ignored_when_the_run_starts_stays_ignored(sig):
    """A script's background job ignores SIGINT (the terminal's Ctrl-C is not for it), and
    nohup ignores SIGHUP: the run keeps going, as its user asked."""
    before = signal.signal(sig, signal.SIG_IGN)
    try:
        stopping = GracefulStop()
        assert signal.getsignal(sig) is signal.SIG_IGN
        os.kill(os.getpid(), sig)
        assert not stopping.should_stop(ONE_PROCESS)
        stopping.restore()
        assert signal.getsignal(sig) is signal.SIG_IGN
    finally:
        signal.signal(sig, before)


def test_a_signal_too_late_to_stop_a_step_is_delivered_when_the_handlers_go():
    """Ctrl-C during the last step: the run ends as finished, then the Ctrl-C is not lost.
    Python's own Ctrl-C handler first: a suite started in the background, as CI starts it,
    inherits SIGINT ignored, and the request then goes where its handler says, nowhere."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stopping = GracefulStop()
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            stopping.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        quiet = GracefulStop()
        os.kill(os.getpid(), signal.SIGINT)
        quiet.restore(deliver=False)  # on the way out of an error: the error is what is raised
    finally:
        signal.signal(signal.SIGINT, before)


def _rank_hears_a_signal_mid_collective(rank: int, port: int, answers) -> None:
    """Rank 1's signal arrives while the first all-reduce runs (its handler runs after it).
    The default group says it is nccl, as on GPUs, so the ranks agree on a gloo group of
    their own (distributed.cpu_group), as they would there."""
    import torch.distributed as dist

    from scops_fast.train import distributed

    join_local_group(rank, port, 2)
    dist.init_process_group("gloo")
    proc = ProcessInfo(rank, 2, torch.device("cpu"))
    get_backend = dist.get_backend
    dist.get_backend = lambda group=None: "nccl"
    try:
        group = distributed.cpu_group(proc)
    finally:
        dist.get_backend = get_backend
    assert group is not None
    stopping = GracefulStop()
    real = dist.all_reduce

    def all_reduce_then_signal(*args, **kwargs):
        done = real(*args, **kwargs)
        if rank == 1 and stopping.signal is None:
            stopping._handle(signal.SIGTERM, None)
        return done

    dist.all_reduce = all_reduce_then_signal
    try:
        answers[rank] = [stopping.should_stop(proc, group) for _ in range(2)]
    finally:
        dist.all_reduce = real
        stopping.restore(deliver=False)
        dist.destroy_process_group()


def test_ranks_agree_when_a_signal_arrives_during_their_collective():
    """The answer is the all-reduce's: rank 1 must not stop a step before rank 0 (which would
    leave rank 0 waiting for its gradients); both stop after the second."""
    import torch.multiprocessing as mp

    with mp.get_context("spawn").Manager() as manager:
        answers = manager.dict()
        spawn_ranks(_rank_hears_a_signal_mid_collective, (free_port(), answers), timeout=120)
        assert dict(answers) == {0: [False, True], 1: [False, True]}


def test_sigterm_to_the_process_group_saves_the_step_and_exits_143(tmp_path):
    """The readers get the signal too: they ignore it, and the trainer finishes its step
    instead of failing on a dead reader."""
    args = long_run(tmp_path, **{"data.num_workers": 1})
    # Its own process group, with its reader in it.
    cmd = [sys.executable, "-m", "scops_fast.train", *args]
    proc = started(cmd, stderr=subprocess.PIPE, text=True)
    try:
        lines = read_until_step(proc, 3)
        os.killpg(proc.pid, signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait() == 143, "".join(lines) + rest
    finally:
        _kill_group(proc)
    step = load_checkpoint(tmp_path / "out")["step"]
    assert 3 <= step < 5000
    assert f"stopped by SIGTERM after step {step}" in rest and "Traceback" not in rest
    assert f"scops-train --out {tmp_path / 'out'} --resume" in rest
    with pytest.raises(ProcessLookupError):  # the reader ended with it
        os.killpg(proc.pid, 0)


def test_a_closed_terminal_saves_the_step_and_exits_129(tmp_path):
    """The run's output goes to a terminal that closes (its master end), then SIGHUP: a log
    line written in between fails with EIO, which ends the lines, not the run; after the
    signal the output goes to /dev/null, and the step is saved."""
    import pty

    master, terminal = pty.openpty()
    args = long_run(tmp_path)
    cmd = [sys.executable, "-m", "scops_fast.train", *args]
    # SIGHUP as in a terminal's session: a suite run under nohup inherits it ignored.
    restored = lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)  # noqa: E731
    proc = started(cmd, stdin=terminal, stdout=terminal, stderr=terminal, preexec_fn=restored)
    os.close(terminal)
    try:
        seen = b""
        while b"step 3/" not in seen:
            chunk = os.read(master, 4096)  # raises OSError (EIO) when the run ended
            seen += chunk
        os.close(master)  # the terminal goes away: writes to it now fail
        time.sleep(0.5)  # some steps' log lines meet the closed terminal before the signal
        proc.send_signal(signal.SIGHUP)
        assert proc.wait() == 129
    finally:
        _kill_group(proc)
    assert 3 <= load_checkpoint(tmp_path / "out")["step"] < 5000


def worker_of_rank(agent: int, rank: int) -> int:
    """The pid of torchrun's worker process for `rank` (a child of the agent process)."""
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under torchrun's agent {agent}")


@pytest.mark.skipif(not pathlib.Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_under_torchrun_one_rank_signalled_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone: rank 0, never signalled, stops after the same step (else the
    ranks would wait for each other's gradients until torchrun killed them, and nothing would
    be saved), saves it, and the run resumes from there under torchrun."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node=2", "-m", "scops_fast.train"]
    args = long_run(tmp_path, **{"data.num_workers": 1, "data.batch_size": 4})
    proc = started(torchrun + args, stderr=subprocess.PIPE, text=True)
    try:
        lines = read_until_step(proc, 3)
        os.kill(worker_of_rank(proc.pid, 1), signal.SIGTERM)
        rest = proc.stderr.read()
        proc.wait()
    finally:
        _kill_group(proc)
    step = load_checkpoint(tmp_path / "out")["step"]
    assert f"stopped by SIGTERM after step {step}" in rest, "".join(lines) + rest
    assert 3 <= step < 5000
    resumed = subprocess.run(
        torchrun + ["--out", str(tmp_path / "out"), "--resume", "--steps", str(step + 2)],
        capture_output=True,
        text=True,
        env=child_env(threads=1),
        timeout=hang_guard(300),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "out")["step"] == step + 2
