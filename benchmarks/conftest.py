"""Options of the benchmark suite.

    pytest benchmarks/ --benchmark [--bench-size default|quick|celeba|...|all|heavy|every]

`--benchmark` is the design card's spelling of pytest-benchmark's `--benchmark-only`.
Loss-op sizes: `default` (every op at the CelebA size, the semantic losses at batch 1:
about two minutes on two cores) unless named; `all` is quick, celeba, b16 and dense2; the
heavy sizes b32 (batch 32 at 256x256) and hires512 (512x512) run only when named (`heavy`
is both, `every` is all); a comma-separated list picks any of them.
`--impl cuda_emu` adds a backend labelled for checking only (cuda_emu; triton under
TRITON_INTERPRET=1), which is otherwise left out: it is slow and would disturb the others.
Training-step cases (bench_train_step.py): `--train-cases 128x1,256x2` (resolution x
batch, each with every CPU backend); none by default.
After pytest-benchmark's table, a summary (benchmarks/summary.py) answers "how much faster":
per op and implementation the median, the speed-up over eager and torch.compile, the
bandwidth against a copy and the peak memory, with the machine; the same rows go into the
`--benchmark-json` file under "scops_fast_summary". `--original PATH --original-tps PATH`
adds the original SCOPS code's loss functions and its training step.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIZES = ("quick", "celeba", "b16", "dense2")
HEAVY_SIZES = ("b32", "hires512")
SIZE_GROUPS = {
    "all": SIZES,
    "heavy": HEAVY_SIZES,
    "every": ("default", *SIZES, *HEAVY_SIZES),
}
TRAIN_BACKENDS = ("reference", "cpp")
DEFAULT_TRAIN_CASES = "none"
LOADAVG_START = pytest.StashKey[str]()
ORIGINAL_STEP = pytest.StashKey[dict]()


def _sizes(text: str) -> tuple:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part in SIZE_GROUPS:
            out += [s for s in SIZE_GROUPS[part] if s not in out]
        elif part in ("default", *SIZES, *HEAVY_SIZES):
            if part not in out:
                out.append(part)
        else:
            choices = ", ".join(("default", *SIZES, *HEAVY_SIZES, *SIZE_GROUPS))
            raise pytest.UsageError(f"--bench-size: unknown size {part!r}; choose from {choices}")
    return tuple(out)


def _train_cases(text: str) -> list:
    """[(size, batch)] from "128x1,256x2"; sorted by size then batch, which the skip
    rule of bench_train_step.py relies on."""
    if text.strip().lower() in ("", "none"):
        return []
    cases = []
    for part in text.split(","):
        size, sep, batch = part.strip().partition("x")
        if not sep or not size.isdigit() or not batch.isdigit():
            raise pytest.UsageError(f"--train-cases: expected SIZExBATCH items, got {part!r}")
        cases.append((int(size), int(batch)))
    return sorted(set(cases))


def pytest_addoption(parser):
    group = parser.getgroup("scops_fast benchmarks")
    group.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="Only run benchmarks: the same as --benchmark-only.",
    )
    group.addoption(
        "--bench-size",
        default="default",
        help="Loss-op problem sizes, comma-separated: default (every op at the CelebA size, "
        "the semantic losses at batch 1), quick (a smoke run), celeba (SPEC section 8), "
        "b16 and dense2 (the CPU-kernel targets), b32 (batch 32, 256x256), hires512 "
        "(512x512); groups: all (quick, celeba, b16, dense2), heavy (the last two), every.",
    )
    group.addoption(
        "--impl",
        action="append",
        default=[],
        help="Also time these implementations, comma-separated or repeated: backends "
        "labelled for checking only (cuda_emu; triton under TRITON_INTERPRET=1) are timed "
        "only when named. The default list: eager, compile and the other usable backends.",
    )
    group.addoption(
        "--bench-memory",
        choices=("on", "off"),
        default="on",
        help="Measure each loss-op case's peak memory in a fresh subprocess (extra_info "
        "peak_mb); default on.",
    )
    group.addoption(
        "--bench-max-gb",
        type=float,
        default=10.0,
        help="Skip loss-op cases whose estimated working set is above this, and cap the "
        "memory subprocesses at it (default 10).",
    )
    group.addoption(
        "--train-cases",
        default=DEFAULT_TRAIN_CASES,
        help=f"Training-step cases SIZExBATCH, comma-separated (default {DEFAULT_TRAIN_CASES}); "
        "'none' for no training-step benchmark.",
    )
    group.addoption("--train-rounds", type=int, default=2, help="Timed steps per case.")
    group.addoption(
        "--original",
        help="A checkout of the original SCOPS code (NVlabs/SCOPS): its loss functions join the "
        "loss-op cases as impl 'original', and its training step is timed beside ours.",
    )
    group.addoption(
        "--original-tps",
        help="With --original: a checkout of its tps_stn_pytorch (WarBean/tps_stn_pytorch).",
    )
    group.addoption(
        "--original-step",
        default="128x2",
        help="With --original: SIZExBATCH of the training steps compared (default 128x2).",
    )
    group.addoption(
        "--train-form",
        choices=("lowres", "full"),
        default="lowres",
        help="Semantic term of the training step (the trainer's default: lowres).",
    )
    group.addoption(
        "--train-run-cap-gb",
        type=float,
        default=10.0,
        help="Never run a training step whose peak is predicted above this; the children "
        "cap their address space at it (default 10).",
    )


# pytest-benchmark reads `benchmark_only` in its own pytest_configure (trylast), so
# setting it first is enough to make both spellings behave the same.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.stash[LOADAVG_START] = _loadavg()
    if config.getoption("benchmark"):
        config.option.benchmark_only = True
    if config.getoption("impl"):
        from bench_losses import case_impls

        case_impls(",".join(config.getoption("impl")))  # a usage error before collection
    if config.getoption("original"):
        if not config.getoption("original_tps"):
            raise pytest.UsageError("--original needs --original-tps (its tps_stn_pytorch)")
        # The memory children of the loss-op cases load the original from these.
        os.environ["SCOPS_FAST_ORIGINAL"] = config.getoption("original")
        os.environ["SCOPS_FAST_ORIGINAL_TPS"] = config.getoption("original_tps")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """With --original, the training steps side by side, before pytest-benchmark saves."""
    config = session.config
    if config.getoption("original") and config.option.benchmark_only:
        import original_step

        size, _, batch = config.getoption("original_step").partition("x")
        config.stash[ORIGINAL_STEP] = original_step.compare(
            config.getoption("original"),
            config.getoption("original_tps"),
            size=int(size),
            batch=int(batch),
            steps=1,
        )
    yield


def _summary(config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return None
    import summarize

    data = {"benchmarks": [b.as_dict(include_data=False) for b in session.benchmarks]}
    machine = summarize.machine_summary(config.stash.get(LOADAVG_START, "?"), _loadavg())
    return summarize.summary_rows(data), summarize.rows(data)[1], machine


def pytest_benchmark_update_json(config, benchmarks, output_json):
    summary = _summary(config)
    if summary is not None:
        rows, _, machine = summary
        output_json["scops_fast_summary"] = {"rows": rows, "machine": machine}
    if ORIGINAL_STEP in config.stash:
        output_json["scops_fast_original_step"] = config.stash[ORIGINAL_STEP]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    summary = _summary(config)
    if summary is None:
        return
    import summarize

    rows, copy, machine = summary
    tr = terminalreporter
    tr.section("scops_fast: how much faster (medians of this run)")
    tr.write_line(summarize.terminal_text(rows, machine, copy))
    if ORIGINAL_STEP in config.stash:
        import original_step

        step = config.stash[ORIGINAL_STEP]
        tr.write_line("")
        tr.write_line(
            f"training step against the original ({step['size']}x{step['size']}, "
            f"batch {step['batch']}):"
        )
        tr.write_line(original_step.summary(step["results"]).rstrip())


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        from bench_losses import case_impls

        original = ("original",) if metafunc.config.getoption("original") else ()
        impls = case_impls(",".join(metafunc.config.getoption("impl")))
        metafunc.parametrize("impl", (*impls, *original))
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", _sizes(metafunc.config.getoption("bench_size")))
    if "train_case" in metafunc.fixturenames:
        cases = [
            (size, batch, backend)
            for size, batch in _train_cases(metafunc.config.getoption("train_cases"))
            for backend in TRAIN_BACKENDS
        ]
        # Size, batch, backend: the backends alternate (they see the same load) and each
        # backend's smaller batches come first (the skip rule uses them).
        cases.sort(key=lambda c: (c[0], c[1], TRAIN_BACKENDS.index(c[2])))
        metafunc.parametrize(
            "train_case", cases, ids=[f"{s}px-b{b}-{name}" for s, b, name in cases]
        )


@pytest.fixture(scope="session", autouse=True)
def _memory_guard(request):
    """Caps this process's address space at --bench-max-gb above what it holds now, so
    that a case larger than the machine fails with an allocation error instead of
    pushing other processes out of memory. Not with CUDA (its address-space
    reservations are far larger than its memory)."""
    import torch

    if not torch.cuda.is_available():
        import memprobe

        memprobe.guard(request.config.getoption("bench_max_gb") * 1024)
    yield


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    # The hook runs when the results are saved, at the end of the session.
    machine_info["loadavg_start"] = config.stash.get(LOADAVG_START, "?")
    machine_info["loadavg_end"] = _loadavg()
