"""Stopping a training run without losing it: on Ctrl-C (SIGINT), SIGTERM or SIGHUP, the step
under way finishes, every rank stops after the same step, and the run is checkpointed there.

SIGTERM is what asks a process to end wherever a run is stopped for it: `kill`, a cluster
scheduler at a time limit or a preemption (SLURM signals every process of the job step), a
container being stopped. torchrun's agent, on a SIGINT, SIGTERM or SIGHUP of its own, sends
that same signal to each worker's whole process group (its workers run in sessions of their
own, so the terminal's Ctrl-C reaches them only that way), and kills them 30 s later.

SIGHUP comes from a closed terminal or SSH session. Its terminal is gone, so the output that
went there goes to /dev/null from then on (a write would fail, and the run with it).

A signal already ignored when the run starts is left ignored: `nohup` ignores SIGHUP, and a
shell script's background job (`cmd &`) ignores SIGINT, so that the terminal's Ctrl-C is not
meant for it. (torchrun installs its own handlers, so `nohup torchrun` still stops on SIGHUP:
use `setsid`, tmux or screen, or TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGQUIT.)

A second Ctrl-C interrupts at once, as a user pressing it twice expects. A second SIGTERM asks
the same again: what follows it from the sender is SIGKILL, not another request.

The DataLoader's reader processes ignore these signals (`ignore_stop_signals`): they would
otherwise die of the signal sent to their process group, and the trainer would fail on a dead
reader (torch raises that in the middle of whatever the trainer is doing) instead of finishing
its step. They end when the trainer closes the loader, or when it dies. The price: a reader
stuck in a read that never returns can no longer be ended by the loader's SIGTERM, only by
SIGKILL.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

#: The signals that ask a run to stop after its step. SIGINT is put back last (`restore`):
#: a Ctrl-C that interrupts the restoring must not leave the others on our handler.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class GracefulStop:
    """While installed (main thread only: Python delivers signals there), the first of
    STOP_SIGNALS is recorded and the run goes on to the end of its step; `should_stop`, asked
    before each step, says when to leave the loop."""

    def __init__(self) -> None:
        #: The first signal this process received, or None.
        self.signal: signal.Signals | None = None
        #: The signal the run stopped for (in a distributed run, as every rank agreed), or None.
        self.stopped: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._terminal = [fd for fd in (1, 2) if _is_terminal(fd)]  # before a hang-up
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup, `cmd &`
                    self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        elif signum == signal.SIGHUP and self._terminal:
            with open(os.devnull, "w") as nowhere:  # the terminal is gone
                for fd in self._terminal:
                    os.dup2(nowhere.fileno(), fd)
            self._terminal = []

    def should_stop(self, proc, group=None) -> bool:
        """Whether to stop before the next step. In a distributed run every rank must call it
        once per step, at the same point: one all-reduce of the signal number (the largest
        wins, so SIGTERM over SIGINT) on `group`, a CPU (gloo) group, so that it costs no
        wait on the GPU's queue. The answer is the all-reduce's alone: a signal that arrives
        while it runs is carried by the next one, so every rank stops after the same step."""
        if proc.distributed:
            flag = torch.tensor([int(self.signal or 0)], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            agreed = int(flag.item())
        else:
            agreed = int(self.signal or 0)
        if agreed:
            self.stopped = signal.Signals(agreed)
        return self.stopped is not None

    def restore(self, deliver: bool = True) -> None:
        """Puts the earlier handlers back. A signal that came too late to stop a step (during
        the last one) is then delivered to them (`deliver`), so that it is not lost: a Ctrl-C
        raises KeyboardInterrupt, a SIGTERM ends the process as it would have."""
        for sig, previous in reversed(self._previous.items()):
            # None: a handler not set from Python, which cannot be put back; the default then.
            if previous is None:
                previous = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous)
        installed, self._previous = bool(self._previous), {}
        if deliver and installed and self.signal is not None and self.stopped is None:
            signal.raise_signal(self.signal)


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: the reader process leaves stopping to the trainer."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def exit_status(sig: signal.Signals) -> int:
    """A shell's status for a process ended by `sig` (130 for Ctrl-C, 143 for SIGTERM, 129
    for SIGHUP)."""
    return 128 + int(sig)
