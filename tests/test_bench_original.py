"""benchmarks/original_step.py's summary and report section, on fabricated results
(no timing here)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import original_step  # noqa: E402
import report  # noqa: E402


def fake(backend, seconds, hwm_mb):
    return {"backend": backend, "status": "ok", "step_seconds": seconds, "hwm_mb": hwm_mb}


def test_summary_ratios_are_medians_against_the_original():
    table = original_step.summary(
        [
            fake("original", [40.0, 30.0, 36.0], 10240.0),
            fake("cpp", [20.0, 18.0, 100.0], 4096.0),
            {"backend": "reference", "status": "failed", "error": "MemoryError: x"},
        ]
    )
    rows = table.splitlines()
    assert rows[2] == "| original | 36.0 | 10.00 | 1.00x | 100% |"
    # median 20 s against median 36 s; 4 GiB of 10 GiB
    assert rows[3] == "| scops_fast `cpp` | 20.0 | 4.00 | 1.80x | 40% |"
    assert rows[4].startswith("| reference | failed: MemoryError")


def test_report_section_names_the_machine_and_the_profile():
    data = {
        "machine": {"cpu": "CPU X", "threads": 2, "load_average": [1.5, 1, 1], "torch": "t"},
        "size": 256,
        "batch": 6,
        "date": "2026-11-30",
        "results": [fake("original", [2.0], 2048.0), fake("cpp", [1.0], 1024.0)],
        "profile": {"backend": "cpp", "profile_fraction": {"convolutions": 0.9, "other": 0.1}},
    }
    text = "\n".join(report.original_section(data))
    assert "256x256, batch 6" in text and "CPU X" in text and "load 1.50" in text
    assert "| scops_fast `cpp` | 1.0 | 1.00 | 2.00x | 50% |" in text
    assert "convolutions 90.0%" in text
