"""`benchmarks/predict_throughput.py` (make bench-predict), run small: every setting predicts
every image, the ratios are against the same run's first row, and the memory samples follow
the records; report.py renders the section."""

import json
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import predict_throughput  # noqa: E402
import report  # noqa: E402


def test_a_small_run_and_its_section(tmp_path):
    out = tmp_path / "predict.json"
    argv = ["--networks", "demo", "--demo-images", "5", "--size", "32", "--batch", "2"]
    assert predict_throughput.main([*argv, "--flat-images", "30", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["throughput"]
    assert [r["setting"] for r in rows] == [
        "one image at a time",
        "batch 2, main thread",
        f"batch 2, {rows[2]['workers']} reader(s)",
    ]
    assert rows[2]["workers"] >= 1 and all(r["images"] == 5 for r in rows)
    for r in rows:
        assert abs(r["images_per_s"] - 5 / r["seconds"]) < 0.01 + 0.01 * r["images_per_s"]
        expected = r["images_per_s"] / rows[0]["images_per_s"]
        assert abs(r["vs_one_at_a_time"] - expected) < 0.01 + 0.01 * expected
    flat = data["flat"]
    assert flat["images"] == 30 and flat["samples"][-1][0] == 30
    section = "\n".join(report.predict_section(data))
    assert "| demo | batch 2, main thread | 5 |" in section
    assert "Memory over 30 images" in section
