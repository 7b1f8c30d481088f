"""One full SCOPS training step (SPEC section 8) as `scops_fast.train.Trainer.train_step`
runs it, in a fresh process: throughput and peak resident memory, per loss backend.

The step is the trainer's own: colour jitter and TPS warp of the batch, two
DeepLab-v2 ResNet-50 passes (random initialisation: no weights are read), VGG-19
relu5_2 + relu5_4 features (`random_vgg19`: VGG-19's structure and cost with seeded
random weights), the five losses through `scops_fast.losses` with `loss.backend`,
backward, gradient clipping and both SGD steps. The batch is a fixed in-memory batch
of random images and saliency maps (data loading is not timed). The semantic term
is the trainer's default form, `semantic_consistency_loss_lowres` (`--form full`
picks the dense one); the reference materialises the (B, 1024, H, W) upsampled
features for it, the fast backends do not.

    # one run, JSON on stdout (times of each step, peak memory)
    python benchmarks/train_step.py run --backend cpp --size 256 --batch 6 --steps 2
    # with config fields changed (--set is repeatable)
    python benchmarks/train_step.py run --batch 2 --set model.activation_checkpointing=blocks
    # a step server for pytest-benchmark (benchmarks/bench_train_step.py drives it)
    python benchmarks/train_step.py serve --backend cpp --size 256 --batch 6
    # the backends' steps alternated in two live processes (fair under a varying load)
    python benchmarks/train_step.py compare --size 256 --batch 2 --rounds 4 --out cmp.json
    # largest batch under a memory cap, from the peaks of a pytest-benchmark JSON
    python benchmarks/train_step.py largest results/train*.json --cap-gb 16 --out largest.json

Memory is the resident-set high-water mark (memprobe.py). `hwm_mb` is the whole
process (Python, torch, weights, optimiser state, the batch and the step); `peak_mb`
is hwm_mb minus the resident set after set-up (what the steps add). Every child caps
its own address space at `--guard-gb` (default 10) so that a run that would not fit
fails with an allocation error instead of pushing the machine out of memory.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import memprobe  # noqa: E402

PROTOCOL = "@@ "  # prefix of the lines a child writes for its parent
DEFAULT_GUARD_GB = 10.0


# --------------------------------------------------------------------------- the child
def build(
    backend: str,
    size: int,
    batch: int,
    form: str = "lowres",
    device: str = "cpu",
    overrides: dict | None = None,
):
    """A Trainer on the SPEC section 8 config (random weights) and one batch; `overrides`
    (dotted config names) change it further."""
    import torch

    from scops_fast.train.data import collate
    from scops_fast.train.trainer import Trainer

    cfg = step_config(backend, size, batch, form, device, overrides)
    gen = torch.Generator().manual_seed(0)
    items = [
        {
            "img": torch.rand(3, size, size, generator=gen),
            "saliency": torch.rand(size, size, generator=gen),
        }
        for _ in range(batch)
    ]
    out = tempfile.mkdtemp(prefix="scops-bench-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # the run's empty folder
    trainer = Trainer(cfg, out, dataset=items, progress=False, tensorboard=False)
    return trainer, collate(items)


def step_config(
    backend: str,
    size: int,
    batch: int,
    form: str = "lowres",
    device: str = "cpu",
    overrides: dict | None = None,
):
    """The SPEC section 8 config with random weights, as `build` trains it."""
    from scops_fast.train.config import Config

    return Config().replace(
        {
            "name": "bench-train-step",
            "device": device,
            "model.pretrained": None,
            "features.kind": "random_vgg19",
            "features.weights": None,
            "data.image_size": size,
            "data.batch_size": batch,
            "loss.backend": backend,
            "loss.semantic_form": form,
            "report": False,
            **(overrides or {}),
        }
    )


def _step(trainer, batch) -> float:
    import torch

    start = time.perf_counter()
    values = trainer.train_step(batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if not torch.isfinite(values).all():
        raise FloatingPointError(f"non-finite losses {values.tolist()}")
    return seconds


def describe(args) -> dict:
    import torch

    return {
        "backend": args.backend,
        "size": args.size,
        "batch": args.batch,
        "form": args.form,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **({"overrides": _overrides(args)} if args.set else {}),
    }


def _overrides(args) -> dict:
    from scops_fast.train.config import parse_override

    return dict(parse_override(text) for text in args.set)


def guard_address_space(trainer, args) -> None:
    """The CPU run's memory cap. Not on a GPU: CUDA reserves far more address space than
    it uses (its unified addressing), and a cap would fail its allocations, not ours."""
    if trainer.device.type == "cpu":
        memprobe.guard(args.guard_gb * 1024)


def child_run(args) -> dict:
    """Set-up, then `warmup` + `steps` steps under one peak measurement."""
    trainer, batch = build(
        args.backend, args.size, args.batch, args.form, args.device, _overrides(args)
    )
    guard_address_space(trainer, args)
    result = describe(args)
    try:
        with memprobe.Peak() as peak:
            warm = [_step(trainer, batch) for _ in range(args.warmup)]
            times = [_step(trainer, batch) for _ in range(args.steps)]
    except (RuntimeError, MemoryError) as exc:
        return {**result, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {**result, **timed(warm, times, peak)}


def timed(warm: list[float], times: list[float], peak) -> dict:
    """The result keys of a successful run: step times and the memprobe.Peak of them."""
    return {
        "status": "ok",
        "warmup_seconds": warm,
        "step_seconds": times,
        "baseline_mb": peak.baseline_mb,
        "hwm_mb": peak.hwm_mb,
        "peak_mb": peak.peak_mb,
    }


def child_serve(args) -> None:
    """Line protocol on stdin: `step` runs one step, `mem` reports the peak since
    set-up, `quit` ends. Answers are `@@ <json>` lines on stdout."""
    trainer, batch = build(
        args.backend, args.size, args.batch, args.form, args.device, _overrides(args)
    )
    guard_address_space(trainer, args)
    peak = memprobe.Peak().__enter__()
    _send({"ready": True, **describe(args), "baseline_mb": peak.baseline_mb})
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            try:
                _send({"seconds": _step(trainer, batch)})
            except (RuntimeError, MemoryError) as exc:
                _send({"error": f"{type(exc).__name__}: {exc}"[:300]})
                return
        elif command == "mem":
            peak.__exit__(None, None, None)
            _send({"baseline_mb": peak.baseline_mb, "hwm_mb": peak.hwm_mb, "peak_mb": peak.peak_mb})
        elif command == "quit":
            return


def _send(obj) -> None:
    sys.stdout.write(PROTOCOL + json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the parent
def child_command(mode: str, backend: str, size: int, batch: int, **options) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), mode]
    cmd += ["--backend", backend, "--size", str(size), "--batch", str(batch)]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def run_child(
    backend, size, batch, *, warmup=1, steps=1, form="lowres", guard_gb=None, overrides=None
) -> dict:
    """One `run` child; its JSON result (status "failed" on an allocation error or a crash).
    overrides: config fields (dotted names) the child's trainer changes."""
    guard = DEFAULT_GUARD_GB if guard_gb is None else guard_gb
    cmd = child_command(
        "run", backend, size, batch, warmup=warmup, steps=steps, form=form, guard_gb=guard
    )
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(PROTOCOL):
            return json.loads(line[len(PROTOCOL) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {
        "backend": backend,
        "size": size,
        "batch": batch,
        "form": form,
        "status": "failed",
        "error": f"exit {proc.returncode}: " + " | ".join(tail),
    }


class StepServer:
    """A `serve` child: `step()` runs one training step there and returns when it is done."""

    def __init__(self, backend, size, batch, *, form="lowres", guard_gb=None):
        guard = DEFAULT_GUARD_GB if guard_gb is None else guard_gb
        cmd = child_command("serve", backend, size, batch, form=form, guard_gb=guard)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])
        raise RuntimeError(f"train-step child exited with {self.proc.wait()}")

    def _ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise MemoryError(answer["error"])
        return answer

    def step(self) -> float:
        return self._ask("step")["seconds"]

    def memory(self) -> dict:
        return self._ask("mem")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- fitting
def fit_affine(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of y = a + b x; None with fewer than 2 distinct x."""
    xs = {x for x, _ in points}
    if len(xs) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    b = sxy / sxx
    return my - b * mx, b


# Statuses of a `largest` row (report.py reads them).
EXTRAPOLATED = "extrapolated"
CONFIRMED = "confirmed"
CONFIRM_FAILED = "confirm failed"
NEXT_FITS_TOO = "confirmed, but the next batch fits too"


def largest_batch(fit: tuple[float, float], cap_mb: float) -> int:
    a, b = fit
    if b <= 0:
        return 0
    return max(0, math.floor((cap_mb - a) / b))


def points_from_benchmark_json(data: dict) -> dict:
    """(backend, size, form) -> [(batch, hwm_mb, median step seconds)] of the
    bench_train_step.py cases in a pytest-benchmark JSON."""
    out: dict = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("kind") != "train_step" or "hwm_mb" not in info:
            continue
        key = (info["backend"], info["size"], info.get("form", "lowres"))
        out.setdefault(key, []).append((info["batch"], info["hwm_mb"], bench["stats"]["median"]))
    return out


def largest(args) -> dict:
    """Largest batch under --cap-gb per (backend, size): affine fit of the measured
    peaks against batch; confirmed by a real run when its prediction is under
    --run-cap-gb, else reported as extrapolated."""
    points: dict = {}
    for path in args.json:
        with open(path) as f:
            for key, pts in points_from_benchmark_json(json.load(f)).items():
                points.setdefault(key, []).extend(pts)
    cap_mb, run_cap_mb = args.cap_gb * 1024, args.run_cap_gb * 1024
    rows = []
    # Intercepts (the resident state without any image: interpreter, weights, optimiser)
    # of the backends' fits at sizes with two or more batches: a size measured at one
    # batch only borrows them (the state does not depend on the image size).
    intercepts: dict = {}
    for (backend, _size, form), pts in points.items():
        fit = fit_affine([(b, m) for b, m, _ in pts])
        if fit is not None:
            intercepts.setdefault((backend, form), []).append(fit[0])
    for (backend, size, form), pts in sorted(points.items()):
        row = {
            "backend": backend,
            "size": size,
            "form": form,
            "cap_gb": args.cap_gb,
            "points": [{"batch": b, "hwm_mb": m, "step_seconds": t} for b, m, t in sorted(pts)],
        }
        mem_fit = fit_affine([(b, m) for b, m, _ in pts])
        borrowed = mem_fit is None and intercepts.get((backend, form))
        if borrowed:
            a = sum(borrowed) / len(borrowed)
            b, m = max((b, m) for b, m, _ in pts)
            mem_fit = (a, (m - a) / b)
            row["fit_note"] = (
                f"one batch measured here; intercept {a / 1024:.2f} GiB from the fits at the "
                "other sizes"
            )
        if mem_fit is None:
            row["status"] = "fewer than two batch sizes measured"
            rows.append(row)
            continue
        best = largest_batch(mem_fit, cap_mb)
        row.update(
            fit_mb={"intercept": mem_fit[0], "per_image": mem_fit[1]},
            largest_batch=best,
            predicted_hwm_mb=mem_fit[0] + mem_fit[1] * best,
        )
        confirm_here = args.confirm_sizes is None or size in args.confirm_sizes
        if best < 1:
            row["status"] = "no batch fits"
        elif row["predicted_hwm_mb"] > run_cap_mb or args.no_confirm or not confirm_here:
            row["status"] = EXTRAPOLATED
        else:
            print(f"confirming {backend} {size}px batch {best} ...", file=sys.stderr, flush=True)
            run = run_child(
                backend, size, best, warmup=1, steps=1, form=form, guard_gb=args.run_cap_gb
            )
            row["confirm"] = run
            fits = run["status"] == "ok" and run["hwm_mb"] <= cap_mb
            row["status"] = CONFIRMED if fits else CONFIRM_FAILED
            if fits and args.cap_gb <= args.run_cap_gb:
                # The next batch, under a guard at the cap itself, must fail to allocate:
                # then `best` is the largest batch that fits, not only one that does.
                print(f"over the cap: {backend} {size}px batch {best + 1} ...", file=sys.stderr)
                over = run_child(
                    backend, size, best + 1, warmup=1, steps=0, form=form, guard_gb=args.cap_gb
                )
                row["over"] = {
                    "batch": best + 1,
                    **{k: over.get(k) for k in ("status", "hwm_mb", "error")},
                }
                if over["status"] == "ok" and over["hwm_mb"] <= cap_mb:
                    row["status"] = NEXT_FITS_TOO
        check = largest_batch(mem_fit, run_cap_mb)
        measured = {b for b, _, _ in pts} | ({best} if "confirm" in row else set())
        if size in args.validate_sizes and check >= 1 and check not in measured:
            # A real run of the largest batch predicted under the run cap: checks the fit.
            print(f"validating {backend} {size}px batch {check} ...", file=sys.stderr, flush=True)
            run = run_child(
                backend, size, check, warmup=1, steps=1, form=form, guard_gb=args.run_cap_gb
            )
            row["validation"] = {
                "batch": check,
                "predicted_hwm_mb": mem_fit[0] + mem_fit[1] * check,
                **{k: run.get(k) for k in ("status", "hwm_mb", "peak_mb", "step_seconds", "error")},
            }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "points"}), file=sys.stderr)
    result = {"cap_gb": args.cap_gb, "run_cap_gb": args.run_cap_gb, "rows": rows}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def compare(args) -> dict:
    """Steps of the backends alternated in fresh servers alive side by side, so that
    they see the same load on a shared machine: per-step times and peaks."""
    servers = {b: StepServer(b, args.size, args.batch, form=args.form) for b in args.backends}
    result = {
        "kind": "train_step_compare",
        "size": args.size,
        "batch": args.batch,
        "form": args.form,
        "rounds": args.rounds,
        "loadavg_start": _loadavg(),
        "cpu": memprobe.cpu_model(),
        "cores": os.cpu_count(),
        "backends": {},
    }
    try:
        times = {b: [] for b in servers}
        for server in servers.values():
            server.step()  # warm-up
        for _ in range(args.rounds):
            for name, server in servers.items():
                times[name].append(server.step())
        for name, server in servers.items():
            result["backends"][name] = {"step_seconds": times[name], **server.memory()}
        result["torch"] = next(iter(servers.values())).info.get("torch")
        result["threads"] = next(iter(servers.values())).info.get("threads")
    finally:
        for server in servers.values():
            server.close()
    result["loadavg_end"] = _loadavg()
    result["datetime"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return result


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("run", "serve"):
        p = sub.add_parser(mode)
        p.add_argument("--backend", default="cpp")
        p.add_argument("--size", type=int, default=256)
        p.add_argument("--batch", type=int, default=6)
        p.add_argument("--form", choices=("lowres", "full"), default="lowres")
        p.add_argument("--device", default="cpu")
        p.add_argument("--guard-gb", type=float, default=DEFAULT_GUARD_GB)
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="config override, as scops-train's --set (repeatable)",
        )
        if mode == "run":
            p.add_argument("--warmup", type=int, default=1)
            p.add_argument("--steps", type=int, default=2)
    p = sub.add_parser("compare", help="backends' steps alternated, side by side")
    p.add_argument("--backends", nargs="+", default=["reference", "cpp"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--form", choices=("lowres", "full"), default="lowres")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out")
    p = sub.add_parser("largest", help="largest batch under a cap from a pytest-benchmark JSON")
    p.add_argument("json", nargs="+", help="pytest-benchmark JSON files of bench_train_step.py")
    p.add_argument("--cap-gb", type=float, default=16.0, help="memory cap, GiB")
    p.add_argument("--run-cap-gb", type=float, default=DEFAULT_GUARD_GB)
    p.add_argument("--no-confirm", action="store_true", help="never run the predicted batch")
    p.add_argument(
        "--confirm-sizes",
        type=lambda text: [int(v) for v in text.split(",") if v],
        default=None,
        help="sizes (e.g. 512) whose predicted largest batch is run, when under --run-cap-gb "
        "(default: every size)",
    )
    p.add_argument(
        "--validate-sizes",
        type=lambda text: [int(v) for v in text.split(",") if v],
        default=[],
        help="sizes (e.g. 512) at which to also run the largest batch predicted under "
        "--run-cap-gb, when not measured already, to check the fit",
    )
    p.add_argument("--out")
    args = parser.parse_args(argv)
    if args.mode == "run":
        _send(child_run(args))
    elif args.mode == "serve":
        child_serve(args)
    elif args.mode == "compare":
        compare(args)
    else:
        largest(args)


if __name__ == "__main__":
    main()
