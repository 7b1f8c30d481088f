"""Options of the benchmark suite.

    pytest benchmarks/ --benchmark [--bench-size quick|celeba|all]

`--benchmark` is the design card's spelling of pytest-benchmark's `--benchmark-only`.
"""

import pytest

SIZES = ("quick", "celeba", "b16", "dense2")


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
        choices=(*SIZES, "all"),
        default="all",
        help="Problem sizes: quick (a smoke run), celeba (SPEC section 8), b16 and dense2 "
        "(the CPU-kernel targets) or all.",
    )


# pytest-benchmark reads `benchmark_only` in its own pytest_configure (trylast), so
# setting it first is enough to make both spellings behave the same.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("benchmark"):
        config.option.benchmark_only = True


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("bench_size")
        metafunc.parametrize("size", SIZES if chosen == "all" else (chosen,))
