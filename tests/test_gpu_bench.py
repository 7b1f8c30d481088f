"""benchmarks/gpu_bench.py without a GPU: its loop runs on CPU tensors at a tiny size with
an injected timer, so what a first GPU run depends on (an error row does not stop the run,
the files hold every finished row at any moment, the time box, a lost device) is checked
on every machine."""

import json
import pathlib
import subprocess
import sys
import time

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bench  # noqa: E402
from bench_losses import OPS, Size  # noqa: E402

TINY = Size(B=1, K=2, H=8, W=8, C=4, h=2, w=2)
META = {"device": "cpu (test)", "size": "tiny", "torch": torch.__version__}


def cpu_bench(timer, **options):
    return gpu_bench.Bench("cpu", TINY, timer, copy_bytes=1024, **options)


def calling_timer(step, case):
    step()
    return 1.0


def eager_cases(ops=OPS, planned_s=3.0):
    """Rows that reach the timer on a CPU (the GPU backends' rows fail before it)."""
    return [gpu_bench.Case("fused", op, "eager", planned_s) for op in ops]


def test_gpu_bench_skips_cleanly_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run the whole benchmark")
    script = ROOT / "benchmarks" / "gpu_bench.py"
    run = subprocess.run(
        [sys.executable, str(script), "--time-box", "60"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines() == [
        "gpu_bench: skipped, no CUDA device is visible to torch on this machine."
    ]


def test_gpu_bench_table_and_order_from_rows():
    rows = [
        {"op": "tps_warp", "impl": "eager", "ms": 4.0, "x_eager": 1.0, "gbs": 10, "of_copy": 0.01},
        {"op": "tps_warp", "impl": "cuda", "ms": 2.0, "x_eager": 2.0, "gbs": 20, "of_copy": 0.02},
        {"op": "tps_warp", "impl": "triton", "ms": 1.0, "x_eager": 4.0, "gbs": 40, "of_copy": 0.04},
        {"op": "concentration_loss", "impl": "cuda", "ms": None, "error": "no"},
        {
            "op": "concentration_loss",
            "impl": "triton",
            "ms": 3.0,
            "x_eager": None,
            "gbs": 1,
            "of_copy": 0.001,
            "peak_bytes": 3 * 2**20,
        },
        {"op": "batch_get_centers", "impl": "cuda", "error": "BackendUnavailableError: not built"},
        {"op": "batch_get_centers", "impl": "triton", "skipped": "time box"},
        # A training row is no op's backend choice, however fast.
        {
            "group": "train",
            "op": "train_step",
            "impl": "cuda",
            "lever": "plain",
            "image_size": 256,
            "batch": 6,
            "ms": 0.5,
            "images_per_s": 12000.0,
            "peak_bytes": 2**30,
        },
        {
            "group": "train",
            "op": "train_step",
            "impl": "reference",
            "lever": "plain",
            "image_size": 512,
            "batch": 12,
            "ms": None,
            "error": "OutOfMemoryError: a | b",
        },
    ]
    assert gpu_bench.faster_backend(rows) == {"tps_warp": "triton", "concentration_loss": "triton"}
    result = {
        "device": "X",
        "copy_gbs": 1000.0,
        "size": "quick",
        "torch": "t",
        "rows": rows,
        "faster_backend": gpu_bench.faster_backend(rows),
    }
    text = gpu_bench.markdown(result)
    assert "| tps_warp | triton | 1.000 | 4.0 | 40 | 4% | | |" in text
    assert "| concentration_loss | triton | 3.000 | | 1 | 0% | 3.0 | 3145728 |" in text
    assert "| concentration_loss | cuda | failed: no |" in text
    assert "| batch_get_centers | cuda | unavailable: BackendUnavailableError: not built |" in text
    assert "| batch_get_centers | triton | skipped: time box |" in text
    assert "| plain | cuda | 256 | 6 | 0.5 | 12000.0 | 1024.0 | 1073741824 |" in text
    assert "| plain | reference | 512 | 12 | failed: OutOfMemoryError: a \\| b |" in text


def test_plan_lists_every_op_and_impl_in_value_order_without_a_gpu(capsys):
    """What the CPU rehearsal of the GPU check runs: `--plan --time-box 150`."""
    assert gpu_bench.main(["--plan", "--time-box", "150"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # "#  group  op  impl  planned": the op column of a training step has spaces.
    rows = [line.split() for line in lines if line[:3].strip().isdigit()]
    groups = [fields[1] for fields in rows]
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    # The largest batch on the GPU before the plain steps at the other shapes.
    assert runs == ["copy", "fused", "train", "autobatch", "train", "compile", "predict"]
    after = groups.index("autobatch") + len(gpu_bench.AUTOBATCH_SHAPES)
    late = [line for line in lines if line[:3].strip().isdigit()][after:]
    late_train = [line for line in late if " train_step " in line]
    assert late_train and all(" train_step plain " in line for line in late_train)
    assert not any("plain 256x6 " in line for line in late_train)  # SPEC's shape came first
    for op in OPS:
        impls = {row[3] for row in rows if row[2] == op}
        expected = {"eager", "compile"} | (
            {"cuda", "triton"} if op != "orthonormal_loss" else set()
        )
        assert impls == expected, op
        fused = [row[3] for row in rows if row[1] == "fused" and row[2] == op]
        assert fused[0] == "eager", op  # the GPU backends' rows are reported against it
    train = [line for line in lines if " train_step " in line]
    for backend in gpu_bench.TRAIN_BACKENDS:
        for size, batch in gpu_bench.TRAIN_SHAPES:
            assert any(f"{size}x{batch} " in line and f" {backend} " in line for line in train)
    assert [line.split(":")[0] for line in lines[-7:]] == [
        "group copy",
        "group fused",
        "group train",
        "group autobatch",
        "group compile",
        "group predict",
        "total",
    ]
    assert "within the time box of 150 s" in lines[-1]
    assert any(line.endswith("(past the time box: skipped)") for line in lines)


def test_an_error_row_is_recorded_and_the_later_rows_still_run(tmp_path):
    def timer(step, case):
        if case.key == "fused/tps_warp/eager":
            raise RuntimeError("kernel said\n  no")
        return calling_timer(step, case)

    cases = gpu_bench.plan_cases(TINY, ("copy", "fused"))
    record = gpu_bench.Record(tmp_path / "bench.json", META, cases)
    assert gpu_bench.run_cases(cpu_bench(timer), cases, record) == []
    rows = {row["case"]: row for row in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert list(rows) == [case.key for case in cases]
    assert rows["fused/tps_warp/eager"]["error"] == "RuntimeError: kernel said no"
    assert rows["fused/tps_warp/eager"]["ms"] is None
    later = rows["fused/equivariance_losses/eager"]
    assert later["ms"] == 1.0 and later["x_eager"] == 1.0 and later["of_copy"] is not None
    # The CUDA kernels cannot run CPU tensors: their rows say why instead of ending the run.
    # (Triton can, where another test of this process switched its interpreter on.)
    assert rows["fused/tps_warp/cuda"]["error"].startswith("BackendUnavailableError")
    triton = rows["fused/equivariance_losses/triton"]
    assert triton["ms"] == 1.0 or triton["error"].startswith("BackendUnavailableError"), triton
    assert "| tps_warp | eager | failed: RuntimeError: kernel said no |" in (
        (tmp_path / "bench.md").read_text()
    )


def test_the_files_hold_every_finished_row_while_the_next_one_runs(tmp_path):
    out = tmp_path / "bench.json"
    cases = eager_cases()
    seen = []

    def inspecting_timer(step, case):
        result = json.loads(out.read_text())
        assert result["in_progress"] == case.key and result["finished"] is False
        finished = [row["case"] for row in result["rows"]]
        assert finished == [c.key for c in cases[: len(seen)]]
        assert all(row["ms"] == 1.0 for row in result["rows"])
        markdown = out.with_suffix(".md").read_text()
        assert f"Running when this was written: {case.key}" in markdown
        assert all(f"| {c.op} | eager | 1.000 |" in markdown for c in cases[: len(seen)])
        seen.append(case.key)
        return calling_timer(step, case)

    record = gpu_bench.Record(out, META, cases)
    gpu_bench.run_cases(cpu_bench(inspecting_timer), cases, record)
    assert seen == [case.key for case in cases]
    final = record.save(finished=True)
    assert json.loads(out.read_text()) == final
    assert final["in_progress"] is None and len(final["rows"]) == len(cases)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]  # no .tmp


def test_the_time_box_skips_the_rows_that_no_longer_fit():
    now = [0.0]
    timed = []

    def timer(step, case):
        timed.append(case.key)
        now[0] += case.planned_s  # each row takes exactly its plan
        return 1.0

    # Three eager rows of 3 s fit in 10 s, the fourth does not, nor the rest; a 1 s row
    # after them still fits in what is left.
    cases = eager_cases(planned_s=3.0) + [gpu_bench.Case("copy", "copy", "copy", 1.0)]
    record = gpu_bench.Record(None, META, cases)
    gpu_bench.run_cases(cpu_bench(timer), cases, record, time_box_s=10.0, clock=lambda: now[0])
    assert timed == [c.key for c in cases[:3]] + ["copy"]
    for case in cases[3:-1]:
        row = record.get(case.key)
        assert row["skipped"] == "time box" and "ms" not in row, row
    assert record.get("copy")["ms"] == 1.0
    assert "| tps_warp | eager | skipped: time box |" in gpu_bench.markdown(record.result())


def test_a_row_still_running_at_the_end_of_the_time_box_is_stopped():
    def stuck_timer(step, case):
        time.sleep(30)

    cases = eager_cases(["orthonormal_loss"], planned_s=0.1) + eager_cases(["tps_warp"], 0.1)
    record = gpu_bench.Record(None, META, cases)
    start = time.monotonic()
    gpu_bench.run_cases(cpu_bench(stuck_timer), cases, record, time_box_s=1.0)
    assert time.monotonic() - start < 5
    assert record.get(cases[0].key)["error"].startswith("RowTimeout: stopped after 1.0 s")
    assert record.get(cases[1].key)["skipped"] == "time box"


def test_peak_memory_goes_in_the_row_and_the_table():
    class FakePeak:
        def reset(self):
            self.resets = getattr(self, "resets", 0) + 1

        def peak_bytes(self):
            return 5 * 2**20

    cases = eager_cases(["concentration_loss"])
    memory = FakePeak()
    record = gpu_bench.Record(None, META, cases)
    gpu_bench.run_cases(cpu_bench(calling_timer, memory=memory), cases, record)
    assert memory.resets == 1
    assert record.get(cases[0].key)["peak_bytes"] == 5 * 2**20
    assert "| 5.0 | 5242880 |" in gpu_bench.markdown(record.result())


def test_a_lost_device_stops_the_run_and_resume_runs_only_the_rest(tmp_path):
    out = tmp_path / "bench.json"
    cases = eager_cases()

    def faulting_timer(step, case):
        if case is cases[2]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return calling_timer(step, case)

    record = gpu_bench.Record(out, META, cases)
    lost = gpu_bench.run_cases(cpu_bench(faulting_timer, device_ok=lambda: False), cases, record)
    assert lost == cases[3:]
    rows, notes, previous = gpu_bench.resumed_rows(out)
    assert [row["case"] for row in rows] == [case.key for case in cases[:3]]
    assert notes == [f"{cases[2].key}: the device stopped working after its error"]

    timed = []

    def counting_timer(step, case):
        timed.append(case.key)
        return calling_timer(step, case)

    resumed = gpu_bench.Record(out, META, cases, rows, notes)
    assert gpu_bench.run_cases(cpu_bench(counting_timer), cases, resumed) == []
    assert timed == [case.key for case in cases[3:]]
    final = [row["case"] for row in json.loads(out.read_text())["rows"]]
    assert final == [case.key for case in cases]
    assert resumed.get(cases[2].key)["error"].startswith("RuntimeError: CUDA error")


def test_training_step_rows_use_train_step_and_fail_alone(monkeypatch):
    """The rows build through train_step.build and time train_step._step; a fake trainer
    stands in for DeepLab and VGG-19 (a real one takes 5 to 20 s to build here)."""
    import inspect

    import train_step

    built = []

    class FakeTrainer:
        device = torch.device("cpu")

        def __init__(self, backend):
            self.backend = backend

        def train_step(self, batch):
            value = float("nan") if self.backend == "triton" else 1.0
            return torch.full((6,), value)

    def fake_build(backend, size, batch, form="lowres", device="cpu", overrides=None):
        built.append((backend, size, batch, form, device, overrides))
        return FakeTrainer(backend), {"img": torch.zeros(batch, 3, size, size)}

    # The fake takes the real build's arguments, so the call is checked against both.
    inspect.signature(train_step.build).bind("cuda", 32, 2, "lowres", "cpu", {})
    monkeypatch.setattr(train_step, "build", fake_build)
    cases = [
        gpu_bench.Case("train", "train_step", "cuda", 1.0, 32, 2, "no-such-lever"),
        gpu_bench.Case("train", "train_step", "triton", 1.0, 32, 2, "plain"),
        gpu_bench.Case("train", "train_step", "cuda", 1.0, 32, 2, "plain"),
        gpu_bench.Case("train", "train_step", "cuda", 1.0, 32, 2, "checkpointing+bfloat16"),
    ]
    record = gpu_bench.Record(None, META, cases)
    gpu_bench.run_cases(cpu_bench(lambda step, case: 4.0 + 0 * step()), cases, record)
    levers = {"model.activation_checkpointing": "blocks", "precision": "bfloat16"}
    assert built == [
        ("triton", 32, 2, "lowres", "cpu", {}),
        ("cuda", 32, 2, "lowres", "cpu", {}),
        ("cuda", 32, 2, "lowres", "cpu", levers),
    ]
    assert record.get(cases[0].key)["error"].startswith("KeyError")
    assert record.get(cases[1].key)["error"].startswith("FloatingPointError: non-finite losses")
    row = record.get("train/plain/32x2/cuda")
    assert row["ms"] == 4.0 and row["images_per_s"] == 500.0
    assert row["form"] == "lowres" and row["warmup_s"] >= 0
    text = gpu_bench.markdown(record.result())
    assert "| plain | cuda | 32 | 2 | 4.0 | 500.0 | | |" in text
    assert "| no-such-lever | cuda | 32 | 2 | failed: KeyError" in text


def test_the_memory_levers_run_at_their_target_sizes_after_the_spec_step():
    cases = [c for c in gpu_bench.plan_cases(TINY, ("train",)) if c.group == "train"]
    first = len(gpu_bench.TRAIN_BACKENDS)
    spec_shape = gpu_bench.TRAIN_SHAPES[0]
    assert all((c.image_size, c.batch) == spec_shape for c in cases[:first])
    levers = [(c.lever, c.image_size, c.batch, c.impl) for c in cases[first:]]
    expected = [
        (lever["name"], size, batch, "cuda")
        for size, batch in gpu_bench.LEVER_SHAPES
        for lever in gpu_bench.LEVERS
        if "shapes" not in lever
    ]
    expected += [
        (lever["name"], size, batch, "cuda")
        for lever in gpu_bench.LEVERS
        for size, batch in lever.get("shapes", ())
    ]
    assert levers[: len(expected)] == expected
    names = {"plain", "checkpointing", "checkpointing+bfloat16", "channels_last", "compile"}
    assert names <= {c.lever for c in cases}
    assert len({c.key for c in cases}) == len(cases)


def test_prediction_rows_run_scops_predict_and_have_their_table(monkeypatch, tmp_path):
    """On CPU tensors and a few tiny images: each row predicts every image, batch 1 on the
    main thread and batch 8 with the GPU default's readers."""
    monkeypatch.setattr(gpu_bench, "PREDICT_IMAGES", 5)
    monkeypatch.setattr(gpu_bench, "PREDICT_SIZE", 16)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cases = [c for c in gpu_bench.plan_cases(TINY, ("predict",)) if c.impl == "demo"]
    assert [c.key for c in cases] == ["predict/demo/batch1", "predict/demo/batch8"]
    record = gpu_bench.Record(None, META, cases)
    gpu_bench.run_cases(cpu_bench(calling_timer), cases, record)
    one, eight = (record.get(c.key) for c in cases)
    assert one["workers"] == 0 and eight["workers"] >= 1
    for row in (one, eight):
        assert row["images_per_s"] == pytest.approx(1e3 / row["ms"])  # ms per image
    assert len(list((tmp_path / "scops_gpu_bench_predict" / "out_demo_8" / "maps").iterdir())) == 5
    text = gpu_bench.markdown(record.result())
    assert "| demo | 16 | 8 | " in text and "scops-predict over 5 PNGs" in text


def test_batch_size_auto_rows_run_the_cuda_search_and_have_their_table(monkeypatch):
    """The rows run autobatch.choose_cuda (on a simulated GPU here) on SPEC section 8's
    config with the cuda losses at each size, capped, under the CPU table's 16 GiB; then
    the chosen batch's steps with the allocator held to the budget, and their peaks."""
    from train_helpers import SimulatedGpu

    per_image = {"none": 2.0, "selective": 1.5, "blocks": 0.8, "stages": 0.6}
    gpu = SimulatedGpu(per_image, device_gib=80.0, reserved_factor=1.02).install(monkeypatch)
    seen = []
    import scops_fast.train.autobatch as autobatch

    real = autobatch.choose_cuda

    def watched(cfg, budget_gb, max_batch):
        seen.append((cfg.loss.backend, cfg.data.image_size, cfg.model.arch, budget_gb, max_batch))
        return real(cfg, budget_gb, max_batch)

    monkeypatch.setattr(autobatch, "choose_cuda", watched)
    cases = gpu_bench.plan_cases(TINY, ("autobatch",))
    assert [(c.image_size, c.batch) for c in cases] == list(gpu_bench.AUTOBATCH_SHAPES)
    record = gpu_bench.Record(None, META, cases)
    gpu_bench.run_cases(cpu_bench(calling_timer), cases, record)
    deeplab = "deeplab_resnet50"
    assert seen == [("cuda", 512, deeplab, 16.0, 32), ("cuda", 1024, deeplab, 16.0, 8)]
    first = record.get(cases[0].key)
    # Under 16 GiB, 1 GiB fixed, 2 % more reserved: none 7, selective 9, blocks 18,
    # stages 24.
    assert first["per_level"] == {"none": 7, "selective": 9, "blocks": 18, "stages": 24}
    assert (first["chosen_batch"], first["chosen_level"]) == (24, "stages")
    assert gpu.steps[-1] == ("selective", 8)  # the last row's chosen batch, trained
    assert gpu.steps and "CUDA trials" in first["method"]
    assert first["confirmed"] is True
    assert first["confirm_allocated_bytes"] == int(15.4 * 2**30)
    assert first["confirm_reserved_bytes"] == int(int(15.4 * 2**30) * 1.02)
    assert gpu.fraction == 1.0
    text = gpu_bench.markdown(record.result())
    assert "Largest batch under 16 GiB per activation checkpointing level" in text
    assert "| 512 | 32 | 7 | 9 | 18 | 24 | 24 (stages) |" in text
    assert "| yes | 15.40 | 15.71 |" in text
    assert "| 1024 | 8 | 7 | 8 | - | - | 8 (selective) |" in text
