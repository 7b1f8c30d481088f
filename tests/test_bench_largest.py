"""`benchmarks/train_step.py largest`: which batches it runs to confirm the largest batch
under the cap, and how it judges them (the children are faked: no training here)."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import report  # noqa: E402
import train_step  # noqa: E402


def bench_json(path, points):
    """A pytest-benchmark JSON with train-step peaks: {(backend, size): {batch: hwm_mb}}."""
    benchmarks = [
        {
            "extra_info": {"kind": "train_step", "backend": b, "size": s, "batch": n, "hwm_mb": m},
            "stats": {"median": 1.0},
        }
        for (b, s), peaks in points.items()
        for n, m in peaks.items()
    ]
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return str(path)


def run_largest(tmp_path, monkeypatch, fits_mb, confirm_sizes):
    """largest() over 1 GiB + 1 GiB per image at sizes 128 and 512, with children whose
    peak is `fits_mb(batch)` (None: the child fails to allocate)."""
    calls = []

    def fake_child(backend, size, batch, *, warmup, steps, form, guard_gb):
        calls.append((size, batch, guard_gb))
        mb = fits_mb(batch)
        if mb is None or mb > guard_gb * 1024:
            return {"status": "failed", "error": "you tried to allocate 1048576 bytes"}
        return {"status": "ok", "hwm_mb": mb}

    monkeypatch.setattr(train_step, "run_child", fake_child)
    peaks = {1: 2048.0, 2: 3072.0}
    path = bench_json(tmp_path / "t.json", {("cpp", 128): peaks, ("cpp", 512): peaks})
    args = train_step.argparse.Namespace(
        json=[path],
        cap_gb=8.0,
        run_cap_gb=8.0,
        no_confirm=False,
        confirm_sizes=confirm_sizes,
        validate_sizes=[],
        out=None,
    )
    rows = {r["size"]: r for r in train_step.largest(args)["rows"]}
    return rows, calls


def test_confirms_only_asked_sizes_and_runs_the_next_batch_under_the_cap(tmp_path, monkeypatch):
    rows, calls = run_largest(tmp_path, monkeypatch, lambda n: 1024.0 * (1 + n), [512])
    # 1 GiB + 1 GiB per image under 8 GiB: 7 images; the 8th needs 9 GiB and is refused.
    assert rows[512]["largest_batch"] == 7
    assert calls == [(512, 7, 8.0), (512, 8, 8.0)]
    assert rows[512]["status"] == "confirmed"
    assert rows[512]["over"]["status"] == "failed"
    assert rows[128]["status"] == "extrapolated" and "confirm" not in rows[128]
    lines = "\n".join(
        report.largest_section({"cap_gb": 8.0, "run_cap_gb": 8.0, "rows": list(rows.values())})
    )
    assert "batch 8 under a 8 GiB guard: failed (an allocation of 1 MiB was refused)" in lines
    assert "predicted 8.00 GiB, measured 8.00 GiB" in lines


@pytest.mark.parametrize(
    "fits_mb, status",
    [
        (lambda n: 512.0 * (1 + n), "confirmed, but the next batch fits too"),
        (lambda n: None, "confirm failed"),
    ],
)
def test_a_fit_the_runs_contradict_is_not_called_confirmed(tmp_path, monkeypatch, fits_mb, status):
    rows, _ = run_largest(tmp_path, monkeypatch, fits_mb, None)
    assert rows[512]["status"] == status and rows[128]["status"] == status


def test_report_gives_only_the_bounds_the_runs_support():
    def row(backend, size, n, status):
        return {
            "backend": backend,
            "size": size,
            "largest_batch": n,
            "status": status,
            "points": [{"batch": 1}],
            "fit_mb": {"intercept": 1024.0, "per_image": 512.0},
            "predicted_hwm_mb": 1024.0 + 512.0 * n,
        }

    rows = [
        row("cpp", 256, 27, "confirmed, but the next batch fits too"),
        row("reference", 256, 11, "confirm failed"),
        row("cpp", 128, 110, "confirm failed"),
        row("reference", 128, 49, "confirm failed"),
    ]
    text = "\n".join(report.largest_section({"cap_gb": 16.0, "run_cap_gb": 16.0, "rows": rows}))
    assert "cpp at least 28 against reference fewer than 11" in text
    assert "at least 2.80x" in text  # 28 / 10
    assert "At 128x128" in text and "no ratio follows from the runs" in text
