"""`benchmarks/train_levers.py` (make bench-levers): the search of real runs for the largest
batch under the cap, and its table (the children are faked: no training here)."""

import argparse
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import train_levers  # noqa: E402

GIB = 1024.0  # MB


def fake_runs(monkeypatch, limit: int, intercept=1000.0, per_image=700.0, beyond_4=None):
    """Children whose peak is affine in the batch (per image `beyond_4` MB above batch 4,
    where given) and refused above `limit`."""
    runs = []

    def run(size, batch, lever, cap_gb):
        runs.append(batch)
        if batch > limit:
            return {"batch": batch, "status": "failed", "error": "can't allocate memory"}
        peak = intercept + per_image * batch
        if beyond_4 is not None and batch > 4:
            peak = intercept + per_image * 4 + beyond_4 * (batch - 4)
        return {"batch": batch, "status": "ok", "hwm_mb": peak, "step_seconds": [2.0 * batch]}

    monkeypatch.setattr(train_levers, "_run", run)
    return runs


def args(**changes):
    base = {"fit_batches": [2, 4], "confirm_sizes": [512], "cap_gb": 16.0, "max_runs": 5}
    return argparse.Namespace(**{**base, **changes})


def test_an_exact_prediction_is_confirmed_by_two_runs(monkeypatch):
    # 1000 + 700 b <= 16384 up to b = 21; the guard refuses 22.
    runs = fake_runs(monkeypatch, limit=21)
    row = train_levers.measure(512, "none", args())
    assert row["predicted_batch"] == 21
    assert (row["status"], row["largest_batch"]) == ("confirmed", 21)
    assert runs == [2, 4, 21, 22] and row["over"]["batch"] == 22


@pytest.mark.parametrize("limit", [9, 15, 18])
def test_a_prediction_above_the_guard_bisects_down(monkeypatch, limit):
    runs = fake_runs(monkeypatch, limit=limit)
    row = train_levers.measure(512, "checkpointing", args(max_runs=8))
    assert (row["status"], row["largest_batch"]) == ("confirmed", limit)
    assert len(runs) - 2 <= 8


def test_a_search_that_runs_out_of_runs_says_at_least(monkeypatch):
    fake_runs(monkeypatch, limit=12)
    row = train_levers.measure(512, "none", args(max_runs=1))  # 21 refused, nothing more
    assert row["status"] == "ran; at least 4 (search stopped)" and row["largest_batch"] == 4
    assert row["over"]["batch"] == 21
    # The fit predicts 21; the steps above batch 4 grow slower and 40 would fit.
    fake_runs(monkeypatch, limit=40, beyond_4=300.0)
    row = train_levers.measure(512, "none", args(max_runs=2))
    assert row["status"] == "ran; at least 22 (search stopped)" and "over" not in row


def test_a_fit_batch_over_the_cap_bounds_the_search(monkeypatch):
    runs = fake_runs(monkeypatch, limit=1, intercept=1000.0, per_image=9000.0)
    row = train_levers.measure(1024, "none", args(confirm_sizes=[1024]))
    assert (row["status"], row["largest_batch"]) == ("confirmed", 1)
    assert runs == [2, 1]


def test_sizes_not_confirmed_are_predictions_and_the_table_reads_them(monkeypatch):
    runs = fake_runs(monkeypatch, limit=21)
    rows = [train_levers.measure(256, lever, args()) for lever in ("none", "checkpointing")]
    assert runs == [2, 4, 2, 4] and {r["status"] for r in rows} == {"predicted"}
    text = train_levers.table({"cap_gb": 16.0, "rows": rows})
    assert "| 256x256 | none | 21 | predicted | - | 0.684 | 2.00 | 1.00x | - |" in text


def test_append_keeps_the_other_rows_and_replaces_the_remeasured(monkeypatch, tmp_path):
    fake_runs(monkeypatch, limit=21)
    out = str(tmp_path / "levers.json")
    first = train_levers.main(["--sizes", "256", "--confirm-sizes", "", "--out", out])
    assert [r["lever"] for r in first["rows"]] == list(train_levers.DEFAULT_LEVERS)
    common = ["--sizes", "256", "--confirm-sizes", "", "--out", out, "--append"]
    both = train_levers.main(["--levers", "selective,none", *common])
    assert sorted(r["lever"] for r in both["rows"]) == sorted(
        [*train_levers.DEFAULT_LEVERS, "selective"]
    )
    table = train_levers.table(both).splitlines()
    assert [line.split(" | ")[1] for line in table[2:]] == [
        "none",
        "selective",
        "checkpointing",
        "checkpointing+bfloat16",
    ]


def test_the_original_lever_runs_the_original_trainer_and_needs_its_checkouts(monkeypatch):
    calls = []

    def fake_original(size, batch, cap_gb):
        calls.append((size, batch, cap_gb))
        return {"status": "ok", "hwm_mb": 1000.0 * batch, "step_seconds": [3.0 * batch]}

    monkeypatch.setattr(train_levers, "_run_original", fake_original)
    run = train_levers._run(512, 2, "original", 16.0)
    assert calls == [(512, 2, 16.0)] and run["status"] == "ok" and run["batch"] == 2
    with pytest.raises(SystemExit):
        train_levers.main(["--levers", "original", "--sizes", "512"])  # no checkouts named
