"""Where training progress goes: a progress bar (tqdm, when installed and stderr is a
terminal; else a log line every `log_every` steps), `metrics.jsonl` (one JSON object per
logged step: the loss curves) and TensorBoard scalars when tensorboard is installed."""

from __future__ import annotations

import pathlib
import sys
import time
import warnings

# Re-exported: the trainer and its users have always imported them from here.
from scops_fast.metrics_file import METRICS_NAME, read_metrics, strict_json
from scops_fast.terminal import progress_bar


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
    """Drops records after `last_step`: a resumed run replays those steps."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    path.write_text("".join(strict_json(r) + "\n" for r in kept))


_warned_no_tensorboard = False


def _tensorboard_writer(log_dir: pathlib.Path):
    global _warned_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if _warned_no_tensorboard:
            return None
        _warned_no_tensorboard = True
        warnings.warn(
            "tensorboard is not installed: no TensorBoard scalars (metrics.jsonl has the same "
            "numbers); pip install tensorboard to get them",
            stacklevel=3,
        )
        return None
    return SummaryWriter(str(log_dir))


class RunLog:
    """Progress of one process; only the main process writes (enabled=False elsewhere)."""

    def __init__(
        self,
        out_dir: pathlib.Path,
        *,
        start_step: int,
        total_steps: int,
        log_every: int,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
        stream=None,
    ):
        self.enabled = enabled
        self.log_every = log_every
        self.total_steps = total_steps
        self.stream = stream or sys.stderr
        self.metrics_path = pathlib.Path(out_dir) / METRICS_NAME
        self.bar = self.writer = None
        self._t0, self._step0 = time.perf_counter(), start_step
        if not enabled:
            return
        if self.metrics_path.exists():
            truncate_metrics(self.metrics_path, start_step)
        self.bar = progress_bar(total_steps, start_step) if progress else None
        self.writer = (
            _tensorboard_writer(pathlib.Path(out_dir) / "tensorboard") if tensorboard else None
        )

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._step0) / elapsed if elapsed > 0 else 0.0
        record = {"step": step, **values, "steps_per_s": round(rate, 4)}
        with open(self.metrics_path, "a") as f:
            f.write(strict_json(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}")
        elif self.stream is not None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            line = f"step {step}/{self.total_steps} {shown} ({rate:.2f} steps/s)"
            try:
                print(line, file=self.stream)
            except OSError:
                # A closed terminal (EIO) or pipe (`| head`): the line was only a view of
                # metrics.jsonl, and the run must not end over it. No more lines.
                self.stream = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
