"""The end-of-run summary of `pytest benchmarks/ --benchmark` (benchmarks/summarize.py), on
fabricated timings: no timing here."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import summarize  # noqa: E402


def bench(op, impl, median, min_bytes=1e9, peak_mb=None, size="default"):
    info = {"op": op, "impl": impl, "size": size, "device": "cpu", "min_bytes": min_bytes}
    if peak_mb is not None:
        info["peak_mb"] = peak_mb
    return {"extra_info": info, "stats": {"median": median}}


DATA = {
    "benchmarks": [
        bench("copy", "copy", 0.1, min_bytes=2e9),  # 20 GB/s
        bench("concentration_loss", "eager", 0.060, peak_mb=400.0),
        bench("concentration_loss", "compile", 0.030, peak_mb=200.0),
        bench("concentration_loss", "cpp", 0.005, peak_mb=40.0),
        bench("orthonormal_loss", "eager", 0.002),
    ]
}


def test_rows_are_ratios_within_the_run():
    rows = summarize.summary_rows(DATA)
    cpp = next(r for r in rows if r["impl"] == "cpp")
    assert cpp["x_eager"] == pytest.approx(12.0)
    assert cpp["x_compile"] == pytest.approx(6.0)
    assert cpp["gb_per_s"] == pytest.approx(200.0)  # 1e9 bytes in 5 ms
    assert cpp["of_copy"] == pytest.approx(10.0)  # against the copy's 20 GB/s
    assert cpp["peak_of_eager"] == pytest.approx(0.1)
    # Fastest first within a case; a case without compile has no x_compile.
    assert [r["impl"] for r in rows if r["op"] == "concentration_loss"] == [
        "cpp",
        "compile",
        "eager",
    ]
    ortho = next(r for r in rows if r["op"] == "orthonormal_loss")
    assert ortho["x_compile"] is None and ortho["peak_mb"] is None


def test_terminal_text_states_the_machine_and_every_row():
    machine = {
        "cpu": "CPU X",
        "cpu_kernels": "avx2 kernels",
        "threads": 2,
        "loadavg_start": "0.5",
        "loadavg_end": "1.5",
    }
    rows = summarize.summary_rows(DATA)
    text = summarize.terminal_text(rows, machine, summarize.rows(DATA)[1])
    lines = text.splitlines()
    cpp = next(line for line in lines if " cpp " in line)
    assert cpp.split()[3:] == ["5.00", "12.0", "6.0", "1000%", "40.0"]
    assert "copy bandwidth (default, cpu): 20.0 GB/s" in text
    assert "CPU X; cpp kernels: avx2 kernels; 2 threads; load average 0.5" in lines[-1]
    assert len([line for line in lines if line.startswith(("concentration", "orthonormal"))]) == 4


def test_the_readme_sample_is_the_saved_run():
    root = pathlib.Path(__file__).resolve().parents[1]
    import json

    data = json.loads((root / "benchmarks" / "results" / "default.json").read_text())
    saved = data["scops_fast_summary"]
    text = summarize.terminal_text(saved["rows"], saved["machine"], summarize.rows(data)[1])
    assert text in (root / "docs" / "benchmarks.md").read_text(), (
        "regenerate the sample in docs/benchmarks.md: python benchmarks/summarize.py "
        "benchmarks/results/default.json --terminal"
    )
