"""The README's demo numbers are those of the committed demo run (docs/demo_metrics.json).

Noise model: none. The numbers are read from the committed JSON and formatted, never
recomputed, so no CPU's rounding reaches them; the ratios are checked to 1e-12 against the
same JSON's own fields (float64 arithmetic on stored values)."""

import copy
import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "scripts/readme_numbers.py")
readme_numbers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_numbers)


def test_the_readme_shows_the_committed_demo_run():
    readme = (ROOT / "README.md").read_text()
    expected = readme_numbers.block(*readme_numbers.load_docs())
    assert expected in readme, "regenerate it: .venv/bin/python scripts/readme_numbers.py"
    assert readme_numbers.main(["--check"]) == 0


def assert_demo_run(metrics: dict, **changes) -> None:
    """metrics is a run of the demo preset (with `changes`), and its criteria add up."""
    from scops_fast.train.config import Config, load_config

    preset, defaults = load_config("demo").replace(changes).to_dict(), Config().to_dict()
    # Fields added to the config since the run keep their defaults; the ones it ran with must be
    # the preset's, or the README describes another run than `make demo`'s.
    for section, value in metrics["config"].items():
        ran = preset[section]
        if isinstance(value, dict) and section in defaults:
            added = set(ran) - set(value)
            assert {k: ran[k] for k in added} == {k: defaults[section][k] for k in added}, section
            ran = {k: v for k, v in ran.items() if k in value}
        assert ran == value, f"demo preset's {section} changed: rerun make demo"
    assert metrics["training"]["steps"] == preset["steps"]
    model, kmeans = metrics["model"], metrics["baselines"]["kmeans"]
    crit = metrics["criteria"]
    ratio = model["landmark_error_test"] / kmeans["landmark_error_test"]
    assert abs(crit["landmark_error_ratio_vs_kmeans"] - ratio) < 1e-12
    assert abs(crit["part_nmi_margin_vs_kmeans"] - (model["part_nmi"] - kmeans["part_nmi"])) < 1e-12
    assert crit["passed"] == (crit["landmark_ok"] and crit["nmi_ok"])


def test_the_committed_run_is_the_demo_preset_and_its_ratios_add_up():
    metrics, eval_128, _ = readme_numbers.load_docs()
    assert_demo_run(metrics)
    assert eval_128 is not None and eval_128["data"]["size"] == 128


def test_the_bfloat16_demo_is_the_preset_in_bfloat16_and_meets_the_criteria():
    _, _, bf16 = readme_numbers.load_docs()
    assert bf16 is not None, "docs/demo_bfloat16_metrics.json is missing"
    assert_demo_run(bf16, precision="bfloat16")
    assert bf16["criteria"]["passed"]


def test_the_text_follows_the_numbers():
    metrics, eval_128, _ = readme_numbers.load_docs()
    changed = copy.deepcopy(metrics)
    changed["model"]["part_nmi"] = 0.5
    changed["criteria"]["landmark_ok"] = False
    changed["training"]["wall_time_s"] = 1234.4
    changed.pop("readme_note", None)
    text = readme_numbers.render(changed, None)
    assert "| SCOPS (demo) | " in text and " | 0.500 | " in text
    assert "(required at most 0.8x: NOT met)" in text
    assert "trained in 1234 s here and scored" in text
    assert "128x128" not in text
    # Exact zeros read as 0; everything else with three decimals.
    assert "| one part everywhere | 0.530 | 0 | 0 | 0.331 |" in readme_numbers.render(metrics)
    assert json.loads(json.dumps(metrics)) == metrics  # plain JSON, as committed
