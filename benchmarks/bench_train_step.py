"""Throughput and peak memory of one full SCOPS training step (SPEC section 8), loss
backend beside loss backend.

    pytest benchmarks/bench_train_step.py --benchmark-only --train-cases 128x1,256x2

Each case (resolution x batch x backend) starts a fresh step server
(`train_step.py serve`), runs one warm-up step, times `--train-rounds` steps through
pytest-benchmark and reads the process's resident high-water mark over all of them.
extra_info: kind "train_step", backend, size, batch, form, hwm_mb (whole process),
peak_mb (above the resident set after set-up), baseline_mb.

A case is skipped, not run, when the peaks already measured for its backend and
resolution at smaller batches predict (affine in the batch) a peak above
--train-run-cap-gb; a case that still outgrows it fails inside its child with an
allocation error (the child caps its address space) and is skipped with that reason.
"""

import pytest
import torch
import train_step

import scops_fast

BACKENDS = tuple(
    name for name in ("reference", "cpp") if "cpu" in scops_fast.available_backends()[name]
)

# (backend, size) -> [(batch, hwm_mb)] measured in this session, for the skip rule.
_MEASURED: dict = {}


def test_train_step(benchmark, request, train_case):
    size, batch, backend = train_case
    if backend not in BACKENDS:
        pytest.skip(f"backend {backend!r} does not run on CPU tensors here")
    config = request.config
    form = config.getoption("train_form")
    run_cap_mb = config.getoption("train_run_cap_gb") * 1024
    fit = train_step.fit_affine(_MEASURED.get((backend, size, form), []))
    if fit is not None and fit[0] + fit[1] * batch > run_cap_mb:
        pytest.skip(
            f"predicted peak {(fit[0] + fit[1] * batch) / 1024:.1f} GB (affine in the batch, "
            f"from smaller batches) is above --train-run-cap-gb {run_cap_mb / 1024:g}"
        )
    server = train_step.StepServer(
        backend, size, batch, form=form, guard_gb=config.getoption("train_run_cap_gb")
    )
    try:
        try:
            server.step()  # warm-up: first-call allocations, optimiser state
        except MemoryError as exc:
            pytest.skip(f"does not fit under --train-run-cap-gb: {exc}")
        benchmark.group = f"train step {size}px"
        try:
            benchmark.pedantic(server.step, rounds=config.getoption("train_rounds"), iterations=1)
        except MemoryError as exc:
            pytest.skip(f"does not fit under --train-run-cap-gb: {exc}")
        memory = server.memory()
    finally:
        server.close()
    _MEASURED.setdefault((backend, size, form), []).append((batch, memory["hwm_mb"]))
    benchmark.extra_info.update(
        kind="train_step",
        op="train_step",
        impl=backend,
        backend=backend,
        size=size,
        batch=batch,
        form=form,
        device="cpu",
        threads=torch.get_num_threads(),
        **memory,
    )
