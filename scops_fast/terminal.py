"""Progress bars for long work (training, saliency maps, prediction): neutral ground that
every package may import."""

from __future__ import annotations

import sys


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(total: int | None, initial: int = 0, unit: str = "step", desc: str | None = None):
    """A tqdm bar on stderr when it is a terminal and tqdm is installed, else None.
    total None: a count without an end."""
    # A bar only where someone watches: in a log file its redraws are noise, and the log
    # lines every log_every steps say the same.
    if not is_terminal(sys.stderr):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr
    )
