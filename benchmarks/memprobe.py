"""Peak resident memory of one piece of work, for the benchmarks.

Linux only (/proc/self/status). The high-water mark (VmHWM) is reset to the current
resident set through /proc/self/clear_refs ("5") when the kernel allows it, so that a
peak can be measured after set-up inside one process; where it does not, VmHWM is
the peak since the process started, which is why every benchmark measures in a fresh
subprocess and reports the peak minus the resident set just before the work.

`guard(cap_mb)` caps the address space so that the process fails with an allocation
error instead of pushing the machine out of memory: it allows `cap_mb` minus the
current resident set of new virtual memory (every new page is first virtual, so the
resident set stays under about `cap_mb`).
"""

from __future__ import annotations

import resource

from scops_fast.process_memory import cap_address_space, reset_peak, status_kb

__all__ = ["Peak", "cpu_model", "guard", "reset_peak", "status_kb"]


class Peak:
    """`with Peak() as p: work()` then p.peak_mb (resident high-water mark during the
    block minus the resident set at its start), p.baseline_mb and p.hwm_mb (absolute)."""

    def __enter__(self):
        self.reset = reset_peak()
        self.baseline_mb = status_kb()["VmRSS"] / 1024
        return self

    def __exit__(self, *exc):
        s = status_kb()
        # ru_maxrss is the same high-water mark, in kB on Linux, never reset; VmHWM is.
        hwm_kb = s["VmHWM"] if self.reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.hwm_mb = hwm_kb / 1024
        self.peak_mb = self.hwm_mb - self.baseline_mb
        self.end_mb = s["VmRSS"] / 1024
        return False


def guard(cap_mb: float | None) -> None:
    """Caps this process's address space so its resident set cannot pass ~cap_mb."""
    if cap_mb:
        cap_address_space(cap_mb * 2**20)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
