"""This process's memory on Linux, for the CPU batch probe (`train.autobatch`) and the
benchmarks (`benchmarks/memprobe.py`): the /proc/self/status figures, a resettable peak, and
a cap on new virtual memory so that a step too large fails to allocate instead of pushing
the machine out of memory."""

from __future__ import annotations

import resource


def status_kb() -> dict[str, int]:
    """The Vm* lines of /proc/self/status (VmRSS, VmHWM, VmSize, ...), in kB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm"):
                out[key] = int(value.split()[0])
    return out


def reset_peak() -> bool:
    """Resets VmHWM to the current resident set; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cap_address_space(cap_bytes: float) -> None:
    """Allows `cap_bytes` minus the current resident set of new virtual memory: every new
    page is virtual first, so the resident set stays under about `cap_bytes`."""
    now = status_kb()
    extra = max(0.0, cap_bytes - now["VmRSS"] * 1024)
    limit = int(now["VmSize"] * 1024 + extra)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
