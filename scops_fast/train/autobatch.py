"""The largest batch for a memory budget (`scops-train --batch-size auto`).

Each activation-checkpointing level ("none", "selective", "blocks", "stages": least
recomputation first) gets the largest batch whose step fits the budget; the choice is the largest
batch of all, and among levels that reach it, the least checkpointing. So a budget that
already fits the batch cap (`max_batch`, at most the data set's size) without
checkpointing gets none.

How a level's largest batch is found:
- CUDA, by trial, as Lightning's BatchSizeFinder does: real steps at the run's image size,
  the caching allocator held to the budget (so a step that fits does so with the
  allocator's fragmentation) and out-of-memory errors caught; steps at batches 1 and 2
  give an affine fit of the tensors' peak (`torch.cuda.max_memory_allocated`), whose
  predicted batch and the next are tried (four steps per level where the peak is affine
  in the batch; where it is not, the search widens from there and bisects).
- CPU, from a memory model: for each level a child process runs one step at two batches
  (`probe_batches`) and reads its resident high-water mark after each (reset between them
  through /proc/self/clear_refs); the peak is affine in the batch. The probes run at the
  run's own image size up to `PROBE_MAX_SIZE` pixels; above it at that size, with the
  per-image part scaled by the pixels (measured on the DeepLab step by `make bench-levers`,
  fits at batches 2 and 4: the per-image memory grew 4.0x to 4.1x from 256 to 512 px and
  from 512 to 1024 px with block checkpointing, and the 1024 px batch it predicts ran). A
  child's address space is capped at the budget, so a probe batch that does not fit is
  refused, not swapped: that level's largest batch is then below it (and 0 when the probe
  ran at a smaller size than the run's). The prediction must stay under `SAFETY` times the
  budget: the training process also holds its data and data-loader workers, and the
  resident peak varies a little from step to step.
- Both measure a step as every step after the first: with the optimisers' state (SGD's
  momentum, the size of the weights) resident, which a first step allocates at its end.

The probes use random weights of the same shapes (no weight file is read) and random
images; what they measure is the memory of the configured network, losses, precision and
accumulation, not of the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Callable

from scops_fast.models.checkpointing import ACTIVATION_CHECKPOINTING
from scops_fast.train.config import Config, ConfigError, config_from_dict

#: The levels tried, least recomputation first (ties go to the earlier one): "selective"
#: recomputes BatchNorm and ReLU only, "blocks" and "stages" every block's forward ("stages"
#: region by ResNet stage: on DeepLab less memory than "blocks" at the same time, on the
#: small network's single stage about none's).
LEVELS = ("none", "selective", "blocks", "stages")
assert set(LEVELS) == set(ACTIVATION_CHECKPOINTING)
#: The CPU probe's largest image size (a 1024 px probe of three levels would take about ten
#: minutes on two cores); its batches hold about as many pixels as one and two images of
#: that size, so that the per-image memory stands out of the allocator's granularity: at
#: batches 1 and 2 of 64 px images the demo network's per-image memory came out 2 MB, and
#: the batch chosen from it peaked 10 % above the budget.
PROBE_MAX_SIZE = 512
#: The share of the budget a CPU prediction may use.
SAFETY = 0.9
#: The largest batch considered when nothing else bounds it.
MAX_BATCH = 1024


@dataclasses.dataclass
class Choice:
    batch_size: int
    activation_checkpointing: str
    #: level -> the largest batch found for it (0: not even one image).
    per_level: dict[str, int]
    #: How it was found, for the printed line.
    method: str
    budget_gb: float

    def line(self, image_size: int) -> str:
        others = ", ".join(f"{level} {n}" for level, n in self.per_level.items())
        return (
            f"batch size auto: {self.batch_size} images of {image_size}x{image_size} with "
            f"activation checkpointing {self.activation_checkpointing!r} under "
            f"{self.budget_gb:g} GiB (largest batch per level: {others}; {self.method})"
        )


def choose(per_level: dict[str, int], max_batch: int) -> tuple[int, str]:
    """(batch, level): the largest batch (capped at max_batch) and the least
    checkpointing that reaches it. Raises ConfigError when no level fits one image."""
    capped = {level: min(n, max_batch) for level, n in per_level.items()}
    best = max(capped.values(), default=0)
    if best < 1:
        raise ConfigError(
            "memory_budget_gb: not even one image fits, with any activation checkpointing "
            f"(largest batches: {per_level}); raise the budget or lower data.image_size"
        )
    level = next(level for level in LEVELS if capped.get(level, 0) == best)
    return best, level


def largest_near(fits: Callable[[int], bool], max_batch: int, guess: int, good: int = 0) -> int:
    """The largest b <= max_batch with fits(b), for a `fits` monotone in b and every batch up
    to `good` known to fit, searched from a predicted `guess`: away from it by steps of 1, 2,
    4, ... until the answer is bracketed, then by bisection. A right guess costs two trials
    (it, and the batch after it); a wrong one, about twice the logarithm of its error."""
    bad = max_batch + 1
    probe = min(max(guess, good + 1), max_batch)
    step = 1
    if probe <= good:
        return good
    if fits(probe):
        good = probe
        while good < max_batch:
            probe = min(good + step, max_batch)
            if not fits(probe):
                bad = probe
                break
            good, step = probe, step * 2
    else:
        bad = probe
        while bad - good > 1:
            probe = max(bad - step, good + 1)
            if fits(probe):
                good = probe
                break
            bad, step = probe, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def largest_by_fit(peak: Callable[[int], float | None], budget: float, max_batch: int) -> int:
    """The largest b <= max_batch whose step's peak, `peak(b)` (None: the step failed for
    memory), is at most `budget`: trials at 1 and 2, the affine fit through them predicts the
    answer, and `largest_near` confirms it (the batch and the one after it) or corrects it."""
    peaks = {}

    def fits(batch: int) -> bool:
        if batch not in peaks:
            peaks[batch] = peak(batch)
        return peaks[batch] is not None and peaks[batch] <= budget

    if not fits(1):
        return 0
    if max_batch < 2 or not fits(2):
        return 1
    slope = peaks[2] - peaks[1]
    guess = max_batch if slope <= 0 else int((budget - peaks[1]) // slope) + 1
    return largest_near(fits, max_batch, guess, good=2)


def per_level(largest: Callable[[str], int], max_batch: int) -> dict[str, int]:
    """level -> largest(level), least checkpointing first, up to the first level that
    reaches max_batch (the later ones cannot do better)."""
    found = {}
    for level in LEVELS:
        found[level] = largest(level)
        if found[level] >= max_batch:
            break
    return found


def probe_config(cfg: Config, image_size: int, batch: int, level: str) -> Config:
    """`cfg` at `image_size` and `batch` with checkpointing `level`, random weights, no
    reports or evaluation: the same memory per step without reading any file."""
    changes = {
        "data.image_size": image_size,
        "data.batch_size": batch,
        "model.activation_checkpointing": level,
        "model.pretrained": None,
        "features.weights": None,
        "report": False,
        "evaluation.enabled": False,
    }
    if cfg.features.kind == "vgg19":
        changes["features.kind"] = "random_vgg19"  # the same network, no weight file
    return cfg.replace(changes)


def probe_step(cfg: Config, before: Callable[[], object] | None = None, steps: int = 1) -> None:
    """`steps` training steps of `cfg` on random images (its batch size, all of a step), as
    every step after the first: the optimisers' state is resident through them. `before`
    runs just before the first (a reset of the peak it measures)."""
    import torch

    from scops_fast.train.data import collate
    from scops_fast.train.trainer import Trainer

    images = cfg.data.batch_size * cfg.data.accumulate
    size = cfg.data.image_size
    gen = torch.Generator().manual_seed(0)
    items = [
        {"img": torch.rand(3, size, size, generator=gen), "saliency": torch.rand(size, size)}
        for _ in range(images)
    ]
    with tempfile.TemporaryDirectory(prefix="scops-autobatch-") as out:
        trainer = Trainer(cfg, out, dataset=items, progress=False, tensorboard=False, alone=True)
        hold_optimiser_state(trainer)
        batch = collate(items)
        if before is not None:
            before()
        for _ in range(steps):
            trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        del trainer


def hold_optimiser_state(trainer) -> None:
    """Allocates the optimisers' state (SGD's momentum: as large as the weights, 91 MiB on
    DeepLab ResNet-50) as a first step does at its end: every later step holds it through
    its forward and backward, so a probe of a first step alone would miss it. One step on
    zero gradients; the weights it changes (weight decay) are random anyway."""
    import torch

    for optimiser in (trainer.net_optimizer, trainer.basis_optimizer):
        for group in optimiser.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- CPU
def _probe_child(job_json: str) -> None:
    """The CPU probe's child: for each batch, one step of `level`, and its resident peak
    (bytes) as a JSON line on stdout; a batch refused by the address-space cap ends it."""
    import gc

    from scops_fast.process_memory import cap_address_space, reset_peak, status_kb
    from scops_fast.train.heap import release_free_heap

    job = json.loads(job_json)
    cfg = config_from_dict(job["config"])
    if job["budget"]:
        cap_address_space(job["budget"])

    def fresh_peak():
        gc.collect()
        release_free_heap()
        reset_peak()

    for batch in job["batches"]:
        try:
            probe_step(probe_config(cfg, job["size"], batch, job["level"]), before=fresh_peak)
        except (MemoryError, RuntimeError) as exc:
            # Under the cap, torch's allocator and oneDNN's primitives fail to allocate.
            text = str(exc).lower()
            if not isinstance(exc, MemoryError) and not (
                "allocate" in text or "could not create a primitive" in text
            ):
                raise
            print(json.dumps({"batch": batch, "refused": True}), flush=True)
            return
        peak = status_kb()["VmHWM"] * 1024
        print(json.dumps({"batch": batch, "peak": peak}), flush=True)


def probe_level(cfg: Config, level: str, budget: float | None) -> list[dict]:
    """The probe child's rows for `level`: {"batch", "peak"} or {"batch", "refused"}."""
    job = {"config": cfg.to_dict(), "level": level, "batches": list(probe_batches(cfg))}
    job.update(budget=budget, size=probe_size(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "scops_fast.train.autobatch", json.dumps(job)],
        capture_output=True,
        text=True,
        # The child imports this package from where this one came, installed or not.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_root(), _pythonpath()]))},
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"batch size auto: the memory probe ({level}) failed: {tail}")
    return rows


def probe_size(cfg: Config) -> int:
    return min(cfg.data.image_size, PROBE_MAX_SIZE)


def probe_batches(cfg: Config) -> tuple[int, int]:
    b = max(1, round((PROBE_MAX_SIZE / probe_size(cfg)) ** 2))
    return b, 2 * b


def cpu_model(
    cfg: Config,
    budget: float | None = None,
    levels=LEVELS,
    progress: Callable[[str], object] | None = None,
) -> dict:
    """level -> (intercept, bytes per image at the run's size) of the step's resident peak,
    or the largest batch known to fit (an int, maybe 0) where a probe batch was refused
    under `budget` bytes. `progress(level)` after each level's probe."""
    scale = (cfg.data.image_size / probe_size(cfg)) ** 2
    model = {}
    for level in levels:
        rows = probe_level(cfg, level, budget)
        if progress is not None:
            progress(level)
        ran = [(r["batch"], r["peak"]) for r in rows if "peak" in r]
        if len(ran) < 2:
            # At the run's size the batches that ran fit; at a smaller one nothing is known.
            model[level] = max((b for b, _ in ran), default=0) if scale == 1 else 0
            continue
        (b0, p0), (b1, p1) = ran
        slope = max(0.0, (p1 - p0) / (b1 - b0))
        model[level] = (p0 - slope * b0, slope * scale)
    return model


def _root() -> str:
    return str(pathlib.Path(__file__).resolve().parents[2])


def _pythonpath() -> str | None:
    return os.environ.get("PYTHONPATH")


def choose_cpu(cfg: Config, budget_gb: float, max_batch: int, progress=None) -> Choice:
    budget = budget_gb * 2**30 * SAFETY
    model = cpu_model(cfg, budget_gb * 2**30, progress=progress)
    per_level = {}
    for level, fit in model.items():
        if isinstance(fit, int):
            per_level[level] = fit  # a probe batch was refused: the largest one that ran
        else:
            a, b = fit
            per_level[level] = max(0, math.floor((budget - a) / b)) if b > 0 else max_batch
    batch, level = choose(per_level, max_batch)
    fit = model[level]
    how = (
        f"{fit[0] / 2**30:.2f} GiB + {fit[1] / 2**30:.3f} GiB per image, predicted peak "
        f"{(fit[0] + fit[1] * batch) / 2**30:.2f} GiB, at most {SAFETY:.0%} of the budget"
        if not isinstance(fit, int)
        else "a probe batch above it was refused"
    )
    method = (
        f"CPU memory model from probe steps at batches {probe_batches(cfg)} of "
        f"{probe_size(cfg)} px: {how}"
    )
    return Choice(batch, level, per_level, method, budget_gb)


# --------------------------------------------------------------------------- CUDA
#: What CUDA says, in RuntimeErrors other than torch.cuda.OutOfMemoryError, when a step
#: does not fit: a library's own allocation failing (cuBLAS, cuDNN), or cuDNN finding no
#: algorithm for the batch (as Lightning's BatchSizeFinder counts them).
CUDA_OUT_OF_MEMORY = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_SUPPORTED",
)


def is_cuda_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in CUDA_OUT_OF_MEMORY)


@contextlib.contextmanager
def cuda_memory_cap(budget: float):
    """The caching allocator of the current GPU held to `budget` bytes of reserved memory
    (`torch.cuda.set_per_process_memory_fraction`) inside the block, and given back its
    earlier cap after it. Under it a step fits only if the allocator can serve it from the
    budget, its fragmentation included, as the run at that budget must; the peak of the
    tensors alone (`max_memory_allocated`) can be below the budget while the memory the
    allocator reserved for them is above it."""
    import torch

    device = torch.cuda.current_device()
    # The cap is checked when the allocator asks CUDA for more memory, not when it serves a
    # block it keeps cached: blocks cached before the cap would let a step exceed it.
    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info(device)[1]
    before = torch.cuda.get_per_process_memory_fraction(device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(before, device)


def cuda_trial(cfg: Config, steps: int = 1) -> int | None:
    """The tensors' peak (bytes) over `steps` probe steps of `cfg` on the current GPU, or
    None where they ran out of memory; any other error is raised. The GPU's memory is given
    back after it."""
    import gc

    import torch

    try:
        probe_step(cfg, before=torch.cuda.reset_peak_memory_stats, steps=steps)
        return torch.cuda.max_memory_allocated()
    except Exception as exc:
        if not is_cuda_out_of_memory(exc):
            raise
        return None
    finally:
        # A failed step's tensors live on in reference cycles (its frames, the autograd
        # graph) until collected: collect them before the next trial.
        gc.collect()
        torch.cuda.empty_cache()


def choose_cuda(cfg: Config, budget_gb: float, max_batch: int, progress=None) -> Choice:
    budget = budget_gb * 2**30
    trials = []

    def peak(level: str, batch: int) -> int | None:
        found = cuda_trial(probe_config(cfg, cfg.data.image_size, batch, level))
        trials.append((level, batch, found is not None and found <= budget))
        if progress is not None:
            progress(f"{level}, batch {batch}")
        return found

    with cuda_memory_cap(budget):
        found = per_level(
            lambda level: largest_by_fit(lambda b: peak(level, b), budget, max_batch), max_batch
        )
    refused = sum(not ok for _, _, ok in trials)
    return Choice(
        *choose(found, max_batch),
        found,
        f"CUDA trials: {len(trials)} steps at {cfg.data.image_size} px (per level, batches 1 "
        f"and 2, then the batch their affine fit predicts and the next), {refused} over the "
        "budget or out of memory; the allocator held to the budget, "
        "torch.cuda.max_memory_allocated fitted",
        budget_gb,
    )


#: The share of the GPU's free memory that the default CUDA budget takes. The probe's steps
#: run alone, so they do not see what a run adds to them: DistributedDataParallel's
#: gradient buckets (a copy of the gradients: 91 MiB on DeepLab ResNet-50) and NCCL's own
#: buffers under torchrun, the evaluation's forward passes, and later steps' fragmentation.
#: Unmeasured: `make gpu-check`'s autobatch rows train the chosen batch a few steps under
#: the budget and record the allocator's peaks (benchmarks/gpu_bench.py).
CUDA_DEFAULT_SHARE = 0.95


def default_budget_gb(device: str) -> float:
    """On CUDA 95 % of what this process can have of the GPU: its free memory (without the
    CUDA context and other processes' memory) and what this process's allocator already
    holds. On CPU 80 % of the memory the OS calls available."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return CUDA_DEFAULT_SHARE * (free + torch.cuda.memory_reserved()) / 2**30
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return 0.8 * info["MemAvailable"] / 2**20


def resolve(
    cfg: Config,
    device: str,
    budget_gb: float | None = None,
    max_batch: int | None = None,
    progress: Callable[[str], object] | None = None,
) -> tuple[Config, Choice]:
    """`cfg` with data.batch_size and model.activation_checkpointing chosen for the budget,
    and the choice (its `line` says what and why). `progress(what)` after each probe: a
    level on the CPU, a trial step on CUDA."""
    if budget_gb is None:
        budget_gb = default_budget_gb(device)
    if budget_gb <= 0:
        raise ConfigError(f"memory_budget_gb: expected a positive number, got {budget_gb!r}")
    cap = MAX_BATCH if max_batch is None else max_batch
    if cap < 1:
        raise ConfigError(f"max_batch: expected at least 1, got {cap!r}")
    finder = choose_cuda if device == "cuda" else choose_cpu
    choice = finder(cfg, budget_gb, cap, progress=progress)
    chosen = cfg.replace(
        {
            "data.batch_size": choice.batch_size,
            "model.activation_checkpointing": choice.activation_checkpointing,
        }
    )
    return chosen, choice


if __name__ == "__main__":
    _probe_child(sys.argv[1])
