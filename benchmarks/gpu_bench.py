"""GPU timings and peak memory of every op and of the SCOPS training step.

Each op forward + backward: the eager reference, the "cuda" and "triton" backends and
torch.compile of the reference, each as a median of `triton.testing.do_bench`, with its
achieved bandwidth (the bytes of the op's inputs and of its gradients over its time) as
a fraction of a device-to-device copy timed in the same run; then one training step
(forward, backward, optimiser) per loss backend at 256 and 512 px and a few batches, with
the memory levers; the largest batch per activation-checkpointing level under 16 GiB that
`scops-train --batch-size auto`'s CUDA search finds; torch.compile's op rows; last
scops-predict's images/s, one image per call against batches with reader processes (the GPU
defaults). It ends with the backend order these timings suggest for
`_dispatch.AUTO_ORDER["cuda"]`.

    python benchmarks/gpu_bench.py [--size celeba] [--out FILE.json] [--time-box SECONDS]
                                   [--groups copy,fused,train,autobatch,compile,predict]
                                   [--resume] [--plan]

Made for a first run on a GPU machine that may be cut short, so that it always leaves
results:
- every row (one op and implementation, or one training step) is caught on any exception
  and recorded with its error, and the run goes on;
- FILE.json and FILE.md (the table) are rewritten atomically before and after every row:
  a killed run leaves every finished row, and "in_progress" names the row it was in;
- the most valuable rows run first: per op the eager reference, "cuda" and "triton";
  then torch.compile (cold compiles are slow); the training steps last;
- `--time-box` skips the rows whose planned time no longer fits ({"skipped": "time box"})
  and stops a row still running when the box ends;
- an error that leaves the CUDA context unusable (every later CUDA call would fail)
  restarts the script on the remaining rows (`--resume`, which also continues a killed run).

`--plan` prints the rows in order with their planned times, needing no GPU. Without a GPU
(and without --plan) it prints one line saying so and exits 0. The default FILE is
benchmarks/results/gpu-<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pathlib
import platform
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

GPU_BACKENDS = ("cuda", "triton")
# The training step before torch.compile's rows: what a GPU's memory and a step's time at
# 512 px say matters more than how Inductor compares, and each compile row costs a cold
# compile. Then the largest batch `scops-train --batch-size auto` finds on this GPU.
GROUPS = ("copy", "fused", "train", "autobatch", "compile", "predict")
NO_GPU_LINE = "gpu_bench: skipped, no CUDA device is visible to torch on this machine."

# scops-predict over a folder of 256x256 PNGs (benchmarks/predict_throughput.py) with
# randomly initialised networks, one image per call and batches with reader processes: the
# CPU defaults (batch 1, no reader) came from make bench-predict; these rows measure the
# GPU's (batch 8, readers). Last: the least valuable numbers.
PREDICT_NETWORKS = ("demo", "deeplab_resnet50")
PREDICT_BATCHES = (1, 8)
PREDICT_IMAGES = 96
PREDICT_SIZE = 256

# Planned seconds of one row (inputs, warm-up, timing, the memory step), for the plan and
# the time box. A run scales them by what the rows of the same group and impl took so far.
PLANNED_S = {
    ("copy", "copy"): 2.0,
    ("fused", "eager"): 3.0,
    ("fused", "cuda"): 2.0,
    # Its first call compiles the Triton kernels of the forward and the backward.
    ("fused", "triton"): 8.0,
    # A cold Inductor compile of the forward and the backward.
    ("compile", "compile"): 30.0,
    # Writing the images once, building the network, then its maps and overlays (about
    # 10 ms an image on the CPU, whatever the GPU).
    ("predict", "predict"): 8.0,
}
COPY_BYTES = 256 * 2**20

# `scops-train --batch-size auto`'s CUDA search (autobatch.choose_cuda) on SPEC section 8's
# step with the cuda losses: the largest batch per checkpointing level under the CPU
# table's 16 GiB (benchmarks/RESULTS.md, "Memory levers"), at (image size, batch cap):
# twice the targets (16 images at 512 px, 4 at 1024 px).
AUTOBATCH_BUDGET_GB = 16.0
AUTOBATCH_SHAPES = ((512, 32), (1024, 8))
# Per level about four trials (batches 1 and 2, the predicted one and the next), each a
# fresh Trainer and one step.
AUTOBATCH_TRIALS_PLANNED = 16
# Then the chosen batch trains this many steps under the budget (a step and its set-up more).
AUTOBATCH_CONFIRM_STEPS = 3

# Training-step rows, most valuable first: SPEC section 8's batch at 256 px, then 512 px,
# then the larger batches (the last ones may not fit the GPU: an out-of-memory row says so).
TRAIN_SHAPES = ((256, 6), (512, 2), (256, 16), (512, 6), (256, 32), (512, 12))
TRAIN_BACKENDS = ("cuda", "triton", "reference")
TRAIN_FORM = "lowres"  # the trainer's default semantic term
# Variants of the training step: a "name" and the config fields ("set") that
# train_step.build changes. "plain" (first) runs at every shape and backend; the memory
# levers (activation checkpointing, then bfloat16 on top of it) at LEVER_SHAPES with the
# cuda losses, beside plain at the same shapes, right after SPEC section 8's shape.
CHECKPOINTED = {"model.activation_checkpointing": "blocks"}
LEVERS = (
    {"name": "plain", "set": {}},
    {"name": "checkpointing", "set": CHECKPOINTED},
    {"name": "checkpointing+bfloat16", "set": {**CHECKPOINTED, "precision": "bfloat16"}},
    # The speed options, whose CUDA defaults wait for these rows; at SPEC section 8's shape
    # (compile's row includes no cold compile in its timing: the warm-up step compiles).
    {"name": "channels_last", "set": {"channels_last": True}, "shapes": ((256, 6),)},
    {"name": "compile", "set": {"compile": True}, "shapes": ((256, 6),)},
)
# The sizes of the targets: 16 images at 512 px, 4 at 1024 px, under 16 GiB.
LEVER_SHAPES = ((512, 16), (1024, 4))
LEVER_BACKENDS = ("cuda",)
# Building the Trainer (random initialisation of DeepLab and VGG-19 on the CPU) and its
# first step; then about 12 steps (the timer's estimate and repetitions, the memory step)
# of a guessed 15 ms per 256x256 image (unmeasured: the first GPU run's rows give "seconds").
TRAIN_BUILD_S = 5.0
TRAIN_STEPS_PLANNED = 12
TRAIN_IMAGE_S = 0.015

# A row runs at most this many times its planned time (at least the floor), and never past
# the end of the time box.
ROW_LIMIT_FACTOR = 5
ROW_LIMIT_FLOOR_S = 60.0
# Restarts after a lost CUDA context: each records the failed row first, so each makes
# progress; the cap bounds the interpreter and CUDA start-ups (about 10 s each).
MAX_RESTARTS = 4
RESTART_S = 10.0


def train_planned_s(image_size: int, batch: int) -> float:
    images = batch * (image_size / 256) ** 2
    return TRAIN_BUILD_S + TRAIN_STEPS_PLANNED * TRAIN_IMAGE_S * images


def autobatch_planned_s(image_size: int, cap: int) -> float:
    # Per level 1 + 2 + n + (n + 1) images, n about half the cap; then the confirming steps
    # of about the cap.
    images = (4 * (3 + cap) + AUTOBATCH_CONFIRM_STEPS * cap) * (image_size / 256) ** 2
    return (AUTOBATCH_TRIALS_PLANNED + 1) * TRAIN_BUILD_S + TRAIN_IMAGE_S * images


@dataclass(frozen=True)
class Case:
    """One row of the benchmark."""

    group: str  # copy, fused (eager and the GPU backends), compile or train
    op: str  # an op of bench_losses.OPS, "copy" or "train_step"
    impl: str  # eager, compile, cuda, triton, copy; for a training step its loss backend
    planned_s: float
    image_size: int | None = None  # training steps only
    batch: int | None = None  # the batch cap of an autobatch row
    lever: str | None = None

    @property
    def key(self) -> str:
        if self.group == "predict":
            return f"predict/{self.impl}/batch{self.batch}"
        if self.group == "autobatch":
            return f"autobatch/{self.image_size}px/max{self.batch}/{self.impl}"
        if self.group == "train":
            return f"train/{self.lever}/{self.image_size}x{self.batch}/{self.impl}"
        if self.group == "copy":
            return "copy"
        return f"{self.group}/{self.op}/{self.impl}"

    def describe(self) -> dict:
        row = {"case": self.key, "group": self.group, "op": self.op, "impl": self.impl}
        if self.group == "train":
            row.update(
                lever=self.lever, image_size=self.image_size, batch=self.batch, form=TRAIN_FORM
            )
        if self.group == "predict":
            row.update(image_size=self.image_size, batch=self.batch)
        if self.group == "autobatch":
            row.update(image_size=self.image_size, max_batch=self.batch)
            row.update(budget_gb=AUTOBATCH_BUDGET_GB, form=TRAIN_FORM)
        return row


def fused_impls(op: str) -> tuple:
    """The GPU backends an op is timed with: none for the one without backend=."""
    from bench_losses import OPS

    from scops_fast import losses

    return () if OPS[op][0] is losses.orthonormal_loss else GPU_BACKENDS


def train_case(lever: dict, image_size: int, batch: int, backend: str) -> Case:
    return Case(
        "train",
        "train_step",
        backend,
        train_planned_s(image_size, batch),
        image_size=image_size,
        batch=batch,
        lever=lever["name"],
    )


def plan_cases(
    size,
    groups=GROUPS,
    *,
    train_shapes=TRAIN_SHAPES,
    train_backends=TRAIN_BACKENDS,
    levers=LEVERS,
    lever_shapes=LEVER_SHAPES,
) -> list[Case]:
    """Every row, in the order they run (the most valuable first)."""
    from bench_losses import OPS

    ops = [op for op in OPS if size.ops is None or op in size.ops]
    cases = []
    if "copy" in groups:
        cases.append(Case("copy", "copy", "copy", PLANNED_S["copy", "copy"]))
    if "fused" in groups:
        for op in ops:
            # eager first: the GPU backends' rows are reported against it.
            for impl in ("eager", *fused_impls(op)):
                cases.append(Case("fused", op, impl, PLANNED_S["fused", impl]))
    if "train" in groups:
        # SPEC section 8's step on every backend, then the levers at their target sizes
        # (the issue 27 numbers); plain at the other shapes (`tail`) runs after the
        # autobatch rows, the largest batch on this GPU being worth more.
        plain = [
            (levers[0], shape, backend) for shape in train_shapes for backend in train_backends
        ]
        first = len(train_backends)
        runs = plain[:first]
        runs += [
            (lever, shape, backend)
            for shape in lever_shapes
            for lever in levers
            if "shapes" not in lever
            for backend in LEVER_BACKENDS
            if backend in train_backends
        ]
        runs += [
            (lever, shape, backend)
            for lever in levers
            for shape in lever.get("shapes", ())
            for backend in LEVER_BACKENDS
            if backend in train_backends
        ]
        tail = plain[first:]
        seen = set()
        for lever, (image_size, batch), backend in runs:
            if (lever["name"], image_size, batch, backend) in seen:
                continue
            seen.add((lever["name"], image_size, batch, backend))
            cases.append(train_case(lever, image_size, batch, backend))
        tail = [
            (lever, shape, backend)
            for lever, shape, backend in tail
            if (lever["name"], *shape, backend) not in seen
        ]
    if "autobatch" in groups:
        cases += [
            Case(
                "autobatch",
                "batch_size_auto",
                "cuda",
                autobatch_planned_s(size, cap),
                image_size=size,
                batch=cap,
            )
            for size, cap in AUTOBATCH_SHAPES
        ]
    if "train" in groups:
        cases += [
            train_case(lever, image_size, batch, backend)
            for lever, (image_size, batch), backend in tail
        ]
    if "compile" in groups:
        planned = PLANNED_S["compile", "compile"]
        cases += [Case("compile", op, "compile", planned) for op in ops]
    if "predict" in groups:
        planned = PLANNED_S["predict", "predict"]
        cases += [
            Case("predict", "predict", net, planned, image_size=PREDICT_SIZE, batch=batch)
            for net in PREDICT_NETWORKS
            for batch in PREDICT_BATCHES
        ]
    return cases


def plan_text(cases: list[Case], time_box_s: float | None, size_name: str, size) -> str:
    box = "none" if time_box_s is None else f"{time_box_s:.0f} s"
    lines = [
        f"gpu_bench plan: ops at size {size_name} (B={size.B} K={size.K} {size.H}x{size.W} "
        f"C={size.C}); time box {box}",
        f"{'#':>3}  {'group':8} {'op':34} {'impl':10} {'planned':>8}",
    ]
    elapsed, fitting = 0.0, 0
    for number, case in enumerate(cases, 1):
        # The run's rule with the static plan: a row starts only if it fits what is left.
        fits = time_box_s is None or elapsed + case.planned_s <= time_box_s
        if fits:
            elapsed += case.planned_s
            fitting += 1
        what = case.op
        if case.group == "train":
            what = f"train_step {case.lever} {case.image_size}x{case.batch}"
        if case.group == "predict":
            what = f"predict {case.image_size}px batch {case.batch}"
        if case.group == "autobatch":
            what = f"batch size auto {case.image_size}px <= {case.batch}"
        mark = "" if fits else "  (past the time box: skipped)"
        lines.append(
            f"{number:3d}  {case.group:8} {what:34} {case.impl:10} {case.planned_s:6.0f} s{mark}"
        )
    for group in GROUPS:
        members = [c for c in cases if c.group == group]
        if members:
            planned = sum(c.planned_s for c in members)
            lines.append(f"group {group}: {len(members)} rows, {planned:.0f} s")
    total = f"total: {len(cases)} rows, {sum(c.planned_s for c in cases):.0f} s"
    if time_box_s is not None:
        total += (
            f"; within the time box of {time_box_s:.0f} s: {fitting} rows ({elapsed:.0f} s), "
            f"{len(cases) - fitting} skipped"
        )
    lines.append(total)
    return "\n".join(lines)


# --------------------------------------------------------------------------- measuring
@dataclass
class Bench:
    """Where and how the rows are measured; tests run it on CPU tensors with a fake timer."""

    device: str
    size: object  # bench_losses.Size of the op rows
    timer: Callable  # timer(step, case) -> median milliseconds of step()
    memory: object = None  # CudaPeak on a GPU; None leaves the memory out
    copy_bytes: int = COPY_BYTES
    device_ok: Callable[[], bool] = lambda: True


class CudaPeak:
    """The caching allocator's high-water mark."""

    def reset(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def one_step_peak(step, memory) -> int | None:
    """The peak of one more call, after the timing: it includes what stays resident (the
    inputs, a trainer's weights and optimiser state) but not the timer's own buffers (the
    256 MB do_bench zeroes between calls to flush the L2 cache)."""
    if memory is None:
        return None
    memory.reset()
    step()
    return memory.peak_bytes()


def do_bench_timer(step, case: Case) -> float:
    import triton.testing

    if case.group == "train":
        # About a second of steps after the warm-up the row already ran.
        return triton.testing.do_bench(step, warmup=0, rep=1000, return_mode="median")
    return triton.testing.do_bench(step, return_mode="median")


def cuda_event_timer(step, case: Case) -> float:
    """The stand-in where Triton cannot be imported: median of CUDA-event timings."""
    target_ms = 1000.0 if case.group == "train" else 100.0
    times = []
    for _ in range(3 if case.group == "train" else 100):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if sum(times) >= target_ms and len(times) >= 3:
            break
    return statistics.median(times)


def choose_timer() -> tuple[Callable, str]:
    try:
        import triton.testing  # noqa: F401
    except Exception as exc:
        return cuda_event_timer, f"CUDA events (triton.testing: {short_error(exc)})"
    return do_bench_timer, "triton.testing.do_bench"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_backward(fn, args, leaves):
    def step():
        out = fn(*args)
        outs = (out,) if torch.is_tensor(out) else tuple(out)
        return torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])

    return step


def op_function(case: Case):
    from bench_losses import OPS

    public, reference = OPS[case.op]
    if case.impl == "eager":
        return reference
    if case.impl == "compile":
        # A fresh cache: each op's compile is cold and none reuses another's graphs.
        torch._dynamo.reset()
        return torch.compile(reference, dynamic=False)
    return lambda *args: public(*args, backend=case.impl)


def measure_copy(bench: Bench, case: Case, record) -> dict:
    source = torch.empty(bench.copy_bytes, dtype=torch.uint8, device=bench.device)
    step = source.clone
    step()
    ms = bench.timer(step, case)
    return {
        "ms": ms,
        "gbs": 2 * source.numel() / (ms * 1e-3) / 1e9,  # read + write
        "peak_bytes": one_step_peak(step, bench.memory),
    }


def measure_op(bench: Bench, case: Case, record) -> dict:
    from bench_losses import make_inputs

    inputs = make_inputs(case.op, bench.size.for_op(case.op), bench.device)
    args = tuple(inputs.values())
    leaves = [t for t in args if t.requires_grad]
    step = forward_backward(op_function(case), args, leaves)
    # Compilation (forward on the first call, backward on its first backward, a recompile
    # on the second) and first-call allocations stay out of the timing.
    start = time.perf_counter()
    for _ in range(2 if case.impl == "compile" else 1):
        step()
    synchronize(bench.device)
    warmup_s = time.perf_counter() - start
    ms = bench.timer(step, case)
    peak = one_step_peak(step, bench.memory)
    tensors = [t for t in args if torch.is_tensor(t)]
    min_bytes = sum(t.numel() * t.element_size() for t in tensors + leaves)
    gbs = min_bytes / (ms * 1e-3) / 1e9
    eager = record.get(f"fused/{case.op}/eager") or {}
    copy_gbs = (record.get("copy") or {}).get("gbs")
    return {
        "ms": ms,
        "x_eager": 1.0 if case.impl == "eager" else eager["ms"] / ms if eager.get("ms") else None,
        "gbs": gbs,
        "of_copy": gbs / copy_gbs if copy_gbs else None,
        "peak_bytes": peak,
        "warmup_s": warmup_s,
        "min_bytes": min_bytes,
        "shape": {name: list(t.shape) for name, t in inputs.items() if torch.is_tensor(t)},
    }


def lever_by_name(name: str) -> dict:
    for lever in LEVERS:
        if lever["name"] == name:
            return lever
    raise KeyError(f"no training lever named {name!r} in gpu_bench.LEVERS")


def train_step_function(lever: dict, trainer, batch) -> Callable[[], float]:
    """One training step (returns its seconds); `lever` was applied when the trainer was
    built, from its config fields."""
    import train_step

    return lambda: train_step._step(trainer, batch)


def measure_train(bench: Bench, case: Case, record) -> dict:
    import train_step

    lever = lever_by_name(case.lever)
    start = time.perf_counter()
    trainer, batch = train_step.build(
        case.impl, case.image_size, case.batch, TRAIN_FORM, bench.device, lever.get("set")
    )
    step = train_step_function(lever, trainer, batch)
    # Warm-up: cuDNN's algorithm choice, the optimisers' state, first-call allocations.
    step()
    warmup_s = time.perf_counter() - start
    ms = bench.timer(step, case)
    return {
        "ms": ms,
        "images_per_s": case.batch / (ms * 1e-3),
        "peak_bytes": one_step_peak(step, bench.memory),
        "warmup_s": warmup_s,
    }


def measure_predict(bench: Bench, case: Case, record) -> dict:
    """scops-predict's images/s over PREDICT_IMAGES images: the network on the device, the
    reading and writing on the CPU, with the GPU defaults' readers when batching."""
    import tempfile

    import predict_throughput

    from scops_fast.train.predict import default_workers

    scratch = pathlib.Path(tempfile.gettempdir()) / "scops_gpu_bench_predict"
    images = scratch / f"images_{case.image_size}_{PREDICT_IMAGES}"
    if not images.exists():
        predict_throughput.write_images(images, PREDICT_IMAGES, case.image_size)
    net = predict_throughput.network(case.impl, case.image_size).to(bench.device)
    workers = 0 if case.batch == 1 else default_workers("cuda")  # the GPU default
    out = scratch / f"out_{case.impl}_{case.batch}"
    if bench.memory is not None:
        bench.memory.reset()
    seconds = predict_throughput.timed(
        net, images, out, batch_size=case.batch, workers=workers, overwrite=True
    )
    return {
        "ms": 1e3 * seconds / PREDICT_IMAGES,
        "images_per_s": PREDICT_IMAGES / seconds,
        "workers": workers,
        "peak_bytes": None if bench.memory is None else bench.memory.peak_bytes(),
    }


def measure_autobatch(bench: Bench, case: Case, record) -> dict:
    """The largest batch per checkpointing level under AUTOBATCH_BUDGET_GB, found as
    `scops-train --batch-size auto` finds it on a GPU (its trials and their count); then
    the chosen batch trained for AUTOBATCH_CONFIRM_STEPS steps with the allocator held to
    the budget: whether it runs, and the tensors' and the allocator's peaks over them (how
    much the allocator's fragmentation adds, which the default budget's margin is for)."""
    import torch
    import train_step

    from scops_fast.train import autobatch

    cfg = train_step.step_config(case.impl, case.image_size, 1, TRAIN_FORM, bench.device)
    start = time.perf_counter()
    choice = autobatch.choose_cuda(cfg, AUTOBATCH_BUDGET_GB, case.batch)
    seconds = time.perf_counter() - start
    row = {
        "ms": 1e3 * seconds,
        "per_level": choice.per_level,
        "chosen_batch": choice.batch_size,
        "chosen_level": choice.activation_checkpointing,
        "method": choice.method,
    }
    if not choice.batch_size:
        return row
    chosen = autobatch.probe_config(
        cfg, case.image_size, choice.batch_size, choice.activation_checkpointing
    )
    with autobatch.cuda_memory_cap(AUTOBATCH_BUDGET_GB * 2**30):
        ran = autobatch.cuda_trial(chosen, steps=AUTOBATCH_CONFIRM_STEPS) is not None
    row["confirmed"] = ran
    # Peaks up to the failure where it ran out of memory.
    row["confirm_allocated_bytes"] = torch.cuda.max_memory_allocated()
    row["confirm_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return row


MEASURES = {
    "copy": measure_copy,
    "fused": measure_op,
    "compile": measure_op,
    "train": measure_train,
    "autobatch": measure_autobatch,
    "predict": measure_predict,
}


# --------------------------------------------------------------------------- the record
def short_error(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."


def write_atomically(path: pathlib.Path, text: str) -> None:
    """A reader, or a kill, sees the old file or the new one, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Record:
    """The rows by case; `save` rewrites FILE.json and FILE.md from them."""

    def __init__(self, out, meta: dict, cases: list[Case], rows=(), notes=()):
        self.out = None if out is None else pathlib.Path(out)
        self.meta = dict(meta)
        self.order = {case.key: i for i, case in enumerate(cases)}
        self.by_key = {row["case"]: row for row in rows if "case" in row}
        self.notes = list(notes)

    def get(self, key: str) -> dict | None:
        return self.by_key.get(key)

    def add(self, row: dict) -> None:
        self.by_key[row["case"]] = row

    def done(self, key: str) -> bool:
        row = self.by_key.get(key)
        return row is not None and "skipped" not in row

    def rows(self) -> list[dict]:
        last = len(self.order)
        return sorted(self.by_key.values(), key=lambda row: self.order.get(row["case"], last))

    def result(self, in_progress: str | None = None, finished: bool = False) -> dict:
        rows = self.rows()
        copy = self.by_key.get("copy") or {}
        return {
            **self.meta,
            "finished": finished,
            "in_progress": in_progress,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "copy_gbs": copy.get("gbs"),
            "notes": self.notes,
            "rows": rows,
            "faster_backend": faster_backend(rows),
        }

    def save(self, in_progress: str | None = None, finished: bool = False) -> dict:
        result = self.result(in_progress, finished)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.out, json.dumps(result, indent=1) + "\n")
            write_atomically(self.out.with_suffix(".md"), markdown(result))
        return result


def resumed_rows(out: pathlib.Path) -> tuple[list[dict], list[str], dict]:
    """The rows of an earlier run to keep (all but the skipped ones), its notes and its
    whole result; nothing when there is no readable file."""
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        return [], [], {}
    rows = [row for row in previous.get("rows", []) if "skipped" not in row and "case" in row]
    return rows, list(previous.get("notes", [])), previous


# --------------------------------------------------------------------------- the loop
class RowTimeout(Exception):
    """A row ran past its limit."""


@contextlib.contextmanager
def row_limit(seconds: float | None):
    """Raises RowTimeout in the row once `seconds` have passed. A signal reaches Python
    code only between bytecodes: a row blocked in one long CUDA call ends with it."""
    usable = (
        seconds is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise RowTimeout(
            f"stopped after {seconds:.1f} s: the end of the time box or "
            f"{ROW_LIMIT_FACTOR}x its planned time"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def estimated_s(case: Case, record: Record) -> float:
    """The case's planned time scaled by how long the rows of its group and impl took
    against their plans in this run."""
    alike = [
        row
        for row in record.by_key.values()
        if row.get("group") == case.group
        and row.get("impl") == case.impl
        and row.get("seconds") is not None
        and row.get("planned_s")
    ]
    if not alike:
        return case.planned_s
    return case.planned_s * sum(r["seconds"] for r in alike) / sum(r["planned_s"] for r in alike)


def release(device: str) -> None:
    """Frees what the last row left, so the next row's peak and time are its own."""
    gc.collect()
    if device.startswith("cuda"):
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def cuda_ok() -> bool:
    """Whether CUDA still works: a kernel fault makes every later CUDA call fail."""
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:
        return False


def status_text(row: dict) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    if row.get("ms") is None:
        return f"error: {row.get('error')}"
    peak = row.get("peak_bytes")
    memory = "" if peak is None else f"  {peak / 2**20:9.1f} MiB"
    return f"{row['ms']:10.3f} ms{memory}  ({row.get('seconds', 0):.1f} s)"


def run_cases(
    bench: Bench,
    cases: list[Case],
    record: Record,
    *,
    time_box_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[Case]:
    """Runs the cases `record` does not hold yet, saving it before and after each row.
    Returns the cases left unrun because the device stopped working (else [])."""
    start = clock()
    for index, case in enumerate(cases):
        if record.done(case.key):
            continue
        estimate = estimated_s(case, record)
        left = None if time_box_s is None else time_box_s - (clock() - start)
        if left is not None and estimate > left:
            record.add({**case.describe(), "skipped": "time box", "planned_s": case.planned_s})
            record.save()
            print(f"gpu_bench: {case.key:56s} skipped: time box", flush=True)
            continue
        record.save(in_progress=case.key)
        limit = max(ROW_LIMIT_FLOOR_S, ROW_LIMIT_FACTOR * estimate)
        if left is not None:
            limit = min(limit, left)
        began, failed = clock(), False
        try:
            with row_limit(limit):
                result = MEASURES[case.group](bench, case, record)
        except Exception as exc:
            failed = True
            result = {"ms": None, "error": short_error(exc)}
            # A backend that cannot run here says why in one line; the rest need the trace.
            if type(exc).__name__ != "BackendUnavailableError":
                traceback.print_exc(limit=-4, file=sys.stderr)
        row = {**case.describe(), **result, "seconds": clock() - began}
        row["planned_s"] = case.planned_s
        record.add(row)
        record.save()
        print(f"gpu_bench: {case.key:56s} {status_text(row)}", flush=True)
        release(bench.device)
        if failed and not bench.device_ok():
            record.notes.append(f"{case.key}: the device stopped working after its error")
            record.save()
            return [c for c in cases[index + 1 :] if not record.done(c.key)]
    return []


# --------------------------------------------------------------------------- reporting
def faster_backend(rows: list[dict]) -> dict:
    """{op: GPU backend with the lowest median} over the op rows that ran."""
    best = {}
    for row in rows:
        if row.get("group") == "train":
            continue
        if row["impl"] in GPU_BACKENDS and row.get("ms") is not None:
            op = row["op"]
            if op not in best or row["ms"] < best[op][1]:
                best[op] = (row["impl"], row["ms"])
    return {op: impl for op, (impl, _) in best.items()}


def _cell(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _outcome(row: dict) -> str:
    if "skipped" in row:
        text = f"skipped: {row['skipped']}"
    elif str(row.get("error", "")).startswith("BackendUnavailableError"):
        text = f"unavailable: {row['error']}"
    else:
        text = f"failed: {row.get('error')}"
    return text.replace("|", "\\|")


def _table_row(cells) -> str:
    return "|" + "|".join(f" {cell} " if cell != "" else " " for cell in cells) + "|"


def _memory_cells(row: dict) -> list[str]:
    peak = row.get("peak_bytes")
    return ["", ""] if peak is None else [f"{peak / 2**20:.1f}", str(peak)]


def markdown(result: dict) -> str:
    copy = result.get("copy_gbs")
    copy_text = f"copy {copy:.0f} GB/s (read + write)" if copy else "copy not measured"
    lines = [
        f"GPU: {result['device']}; {copy_text}; size {result['size']}; torch {result['torch']}",
        "",
    ]
    if result.get("in_progress"):
        lines += [f"Running when this was written: {result['in_progress']}", ""]
    rows = result["rows"]
    lines += [
        "| op | impl | median ms | x eager | GB/s | of copy | peak MiB | peak bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("group") in ("train", "predict", "autobatch"):
            continue
        lead = [r["op"], r["impl"]]
        if r.get("ms") is None:
            lines.append(_table_row([*lead, _outcome(r), "", "", "", "", ""]))
            continue
        measured = [
            f"{r['ms']:.3f}",
            _cell(r.get("x_eager"), ".1f"),
            _cell(r.get("gbs"), ".0f"),
            _cell(r.get("of_copy"), ".0%"),
        ]
        lines.append(_table_row([*lead, *measured, *_memory_cells(r)]))
    train = [r for r in rows if r.get("group") == "train"]
    if train:
        lines += [
            "",
            "Training step (forward, backward, optimiser; random weights):",
            "",
            "| lever | backend | image | batch | ms / step | images / s | peak MiB | peak bytes |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in train:
            lead = [r["lever"], r["impl"], r["image_size"], r["batch"]]
            if r.get("ms") is None:
                lines.append(_table_row([*lead, _outcome(r), "", "", ""]))
                continue
            measured = [f"{r['ms']:.1f}", _cell(r.get("images_per_s"), ".1f")]
            lines.append(_table_row([*lead, *measured, *_memory_cells(r)]))
    searched = [r for r in rows if r.get("group") == "autobatch"]
    if searched:
        from scops_fast.train.autobatch import LEVELS

        lines += [
            "",
            f"Largest batch under {AUTOBATCH_BUDGET_GB:g} GiB per activation checkpointing level, "
            "found by `scops-train --batch-size auto`'s CUDA search (SPEC section 8's step, "
            "cuda losses; `-`: not searched, an earlier level reached the cap); then "
            f"{AUTOBATCH_CONFIRM_STEPS} steps of the chosen batch with the allocator held to "
            "the budget, and their peaks (tensors, and the memory the allocator reserved):",
            "",
            f"| image | cap | {' | '.join(LEVELS)} | chosen | search s "
            "| chosen trains | tensors GiB | reserved GiB |",
            f"|---:|---:|{'---:|' * len(LEVELS)}---|---:|---|---:|---:|",
        ]
        for r in searched:
            lead = [r["image_size"], r["max_batch"]]
            if r.get("ms") is None:
                lines.append(_table_row([*lead, _outcome(r), *[""] * (len(LEVELS) + 4)]))
                continue
            found = [r["per_level"].get(level, "-") for level in LEVELS]
            chosen = f"{r['chosen_batch']} ({r['chosen_level']})"
            confirmed = {True: "yes", False: "out of memory", None: "-"}[r.get("confirmed")]
            peaks = [
                _cell(r.get(key) and r[key] / 2**30, ".2f")
                for key in ("confirm_allocated_bytes", "confirm_reserved_bytes")
            ]
            lines.append(
                _table_row([*lead, *found, chosen, f"{r['ms'] / 1e3:.0f}", confirmed, *peaks])
            )
    predict = [r for r in rows if r.get("group") == "predict"]
    if predict:
        lines += [
            "",
            f"scops-predict over {PREDICT_IMAGES} PNGs (network on the GPU, files on the CPU):",
            "",
            "| network | image | batch | readers | ms / image | images / s | peak MiB "
            "| peak bytes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in predict:
            lead = [r["impl"], r["image_size"], r["batch"]]
            if r.get("ms") is None:
                lines.append(_table_row([*lead, _outcome(r), "", "", "", ""]))
                continue
            measured = [r.get("workers", ""), f"{r['ms']:.1f}", _cell(r["images_per_s"], ".1f")]
            lines.append(_table_row([*lead, *measured, *_memory_cells(r)]))
    lines += ["", "Faster GPU backend per op: " + json.dumps(result["faster_backend"])]
    lines += [f"Note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the script
def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_groups(text: str) -> tuple:
    groups = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown group(s) {unknown}; choose from {GROUPS}")
    return groups


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="celeba", help="the op rows' size (bench_losses.SIZES)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="FILE.json (and FILE.md)")
    parser.add_argument(
        "--time-box",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip the rows that no longer fit in SECONDS; stop a row still running then",
    )
    parser.add_argument(
        "--groups",
        type=parse_groups,
        default=GROUPS,
        help=f"comma-separated, from {','.join(GROUPS)} (default: all)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep FILE.json's rows and run only the others"
    )
    parser.add_argument(
        "--plan", action="store_true", help="print the rows and their planned times; no GPU"
    )
    parser.add_argument("--restarts", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def restart_argv(args, out: pathlib.Path, time_left: float | None) -> list[str]:
    argv = ["--size", args.size, "--out", str(out), "--groups", ",".join(args.groups)]
    argv += ["--resume", "--restarts", str(args.restarts + 1)]
    if time_left is not None:
        argv += ["--time-box", f"{time_left:.0f}"]
    return argv


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.plan and not torch.cuda.is_available():
        print(NO_GPU_LINE)
        return 0
    from bench_losses import SIZES

    if args.size not in SIZES:
        print(f"gpu_bench: unknown --size {args.size!r}; choose from {', '.join(SIZES)}")
        return 2
    size = SIZES[args.size]
    cases = plan_cases(size, args.groups)
    if args.plan:
        print(plan_text(cases, args.time_box, args.size, size))
        return 0
    return run_on_gpu(args, size, cases)


def run_on_gpu(args, size, cases: list[Case]) -> int:
    started = time.monotonic()
    name = torch.cuda.get_device_name()
    out = args.out or HERE / "results" / f"gpu-{device_slug(name)}.json"
    timer, timer_name = choose_timer()
    rows, notes, previous = resumed_rows(out) if args.resume else ([], [], {})
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    meta = {
        "kind": "gpu_bench",
        "device": name,
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "size": args.size,
        "shape": {k: getattr(size, k) for k in ("B", "K", "H", "W", "C", "h", "w")},
        "timer": timer_name,
        "time_box_s": args.time_box,
        "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "restarts": args.restarts,
        "levers": list(LEVERS),
        "planned_s": sum(case.planned_s for case in cases),
    }
    record = Record(out, meta, cases, rows, notes)
    bench = Bench("cuda", size, timer, CudaPeak(), device_ok=cuda_ok)
    box = "" if args.time_box is None else f", time box {args.time_box:.0f} s"
    print(
        f"gpu_bench: {len(cases)} rows planned at {meta['planned_s']:.0f} s{box}; "
        f"{out} and its .md are rewritten after every row",
        flush=True,
    )
    lost = run_cases(bench, cases, record, time_box_s=args.time_box)
    if lost:
        left = None
        if args.time_box is not None:
            left = args.time_box - (time.monotonic() - started) - RESTART_S
        if args.restarts < MAX_RESTARTS and (left is None or left > 0):
            record.notes.append(f"restarted for the {len(lost)} rows left")
            record.save()
            sys.stdout.flush()
            sys.stderr.flush()
            script = str(pathlib.Path(__file__).resolve())
            os.execv(sys.executable, [sys.executable, script, *restart_argv(args, out, left)])
        why = "device lost, no restart left" if args.restarts >= MAX_RESTARTS else "time box"
        for case in lost:
            record.add({**case.describe(), "skipped": why, "planned_s": case.planned_s})
    result = record.save(finished=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
