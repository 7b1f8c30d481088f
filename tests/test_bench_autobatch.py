"""`benchmarks/autobatch_check.py` (make bench-autobatch) without DeepLab: the choice and the
child's run are faked; what is checked is what it asks of them (the chosen batch and level,
two steps, the guard at the budget) and its verdict."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import autobatch_check  # noqa: E402
import train_step  # noqa: E402

from scops_fast.train import autobatch  # noqa: E402


@pytest.mark.parametrize(
    ("hwm_mb", "status", "passed"),
    [(7000.0, "ok", True), (8300.0, "ok", False), (0, "failed", False)],
)
def test_the_check_trains_the_choice_under_the_budget(
    monkeypatch, tmp_path, hwm_mb, status, passed
):
    asked = {}

    def fake_resolve(cfg, device, budget_gb, max_batch, progress=None):
        asked["resolve"] = (cfg.model.arch, cfg.data.image_size, device, budget_gb, max_batch)
        for level in autobatch.LEVELS:
            progress(level)
        per_level = {"none": 11, "selective": 16, "blocks": 30, "stages": 37}
        return cfg, autobatch.Choice(37, "stages", per_level, "faked", budget_gb)

    def fake_run_child(backend, size, batch, **kwargs):
        asked["run"] = (backend, size, batch, kwargs)
        return {"status": status, "hwm_mb": hwm_mb, "step_seconds": [1.0]}

    monkeypatch.setattr(autobatch, "resolve", fake_resolve)
    monkeypatch.setattr(train_step, "run_child", fake_run_child)
    out = tmp_path / "check.json"
    code = autobatch_check.main(["--size", "64", "--budget-gb", "8", "--out", str(out)])
    assert code == (0 if passed else 1)
    assert asked["resolve"] == ("deeplab_resnet50", 64, "cpu", 8.0, 64)
    overrides = {"model.activation_checkpointing": "stages"}
    assert asked["run"] == (
        "cpp",
        64,
        37,
        dict(warmup=1, steps=1, guard_gb=8.0, overrides=overrides),
    )
    result = json.loads(out.read_text())
    assert result["passed"] is passed
    assert (result["chosen_batch"], result["chosen_level"]) == (37, "stages")
