"""Options of the benchmark suite.

    pytest benchmarks/ --benchmark [--bench-size quick|celeba|...|all|heavy|every]

`--benchmark` is the design card's spelling of pytest-benchmark's `--benchmark-only`.
Loss-op sizes: `all` (the default) is quick, celeba, b16 and dense2; the heavy sizes
b32 (batch 32 at 256x256) and hires512 (512x512) run only when named (`heavy` is both,
`every` is all six); a comma-separated list picks any of them.
Training-step cases (bench_train_step.py): `--train-cases 128x1,256x2` (resolution x
batch, each with every CPU backend), `--train-cases none` to leave them out.
"""

import pytest

SIZES = ("quick", "celeba", "b16", "dense2")
HEAVY_SIZES = ("b32", "hires512")
SIZE_GROUPS = {"all": SIZES, "heavy": HEAVY_SIZES, "every": SIZES + HEAVY_SIZES}
TRAIN_BACKENDS = ("reference", "cpp")
DEFAULT_TRAIN_CASES = "128x1,128x2"
LOADAVG_START = pytest.StashKey[str]()


def _sizes(text: str) -> tuple:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part in SIZE_GROUPS:
            out += [s for s in SIZE_GROUPS[part] if s not in out]
        elif part in SIZES + HEAVY_SIZES:
            if part not in out:
                out.append(part)
        else:
            choices = ", ".join((*SIZES, *HEAVY_SIZES, *SIZE_GROUPS))
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
        default="all",
        help="Loss-op problem sizes, comma-separated: quick (a smoke run), celeba (SPEC "
        "section 8), b16 and dense2 (the CPU-kernel targets), b32 (batch 32, 256x256), "
        "hires512 (512x512); groups: all (the first four, default), heavy (the last two), "
        "every.",
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


def pytest_generate_tests(metafunc):
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
