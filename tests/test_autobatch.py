"""`scops-train --batch-size auto`: the largest batch and the least activation
checkpointing for a memory budget (scops_fast.train.autobatch)."""

import json

import pytest
from train_helpers import tiny_config

from scops_fast.cli.train import main
from scops_fast.train import autobatch
from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.config import ConfigError


def test_the_choice_is_the_largest_batch_then_the_least_checkpointing():
    assert autobatch.choose({"none": 7, "selective": 12, "blocks": 26}, 64) == (26, "blocks")
    # Capped: every level reaching the cap ties, and the least recomputation wins.
    assert autobatch.choose({"none": 7, "selective": 12, "blocks": 26}, 10) == (10, "selective")
    assert autobatch.choose({"none": 40, "selective": 50, "blocks": 60}, 16) == (16, "none")
    with pytest.raises(ConfigError, match="memory_budget_gb: not even one image fits"):
        autobatch.choose({"none": 0, "selective": 0, "blocks": 0}, 16)


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 5, 8, 13, 31, 32, 33, 100])
def test_the_trial_search_finds_the_largest_batch_that_fits(limit):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit

    assert autobatch.largest_near(fits, 32, guess=1) == min(limit, 32)  # nothing predicted
    assert max(tried) <= 32
    assert len(tried) <= 2 * 6 + 1  # doubling then bisection: logarithmic in the cap


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 5, 8, 13, 31, 32, 33, 100])
@pytest.mark.parametrize("guess", [1, 2, 4, 7, 12, 13, 14, 30, 32, 200])
def test_the_search_from_a_guess_finds_the_largest_batch_that_fits(limit, guess):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit

    good = min(2, limit)
    assert autobatch.largest_near(fits, 32, guess, good=good) == min(limit, 32)
    assert all(good < b <= 32 for b in tried)
    assert len(tried) == len(set(tried))
    if good < guess == limit < 32:
        assert tried == [limit, limit + 1]  # a right guess: two trials
    assert len(tried) <= 2 * 6 + 2


@pytest.mark.parametrize("curve", ["affine", "steps", "cudnn"])
def test_the_fit_search_finds_the_largest_batch_under_the_budget(curve):
    """An affine peak is settled in four trials; a monotone peak that is not affine (a
    workspace that jumps at some batches) still gets the right answer."""

    def peak_of(batch):
        base = 1000 + 37 * batch
        if curve == "steps":
            base += 400 * (batch >= 9)
        if curve == "cudnn":
            base += 5 * batch * batch
        return None if base > 2600 else base

    budget = 1900
    truth = max((b for b in range(1, 65) if (peak_of(b) or 10**9) <= budget), default=0)
    tried = []

    def peak(batch):
        tried.append(batch)
        return peak_of(batch)

    assert autobatch.largest_by_fit(peak, budget, 64) == truth
    if curve == "affine":
        assert tried == [1, 2, truth, truth + 1]


def test_trials_stop_at_the_first_level_that_reaches_the_cap():
    limits = {"none": 3, "selective": 9, "blocks": 40}
    tried = []

    def fits(level, batch):
        tried.append(level)
        return batch <= limits[level]

    def per_level(cap):
        return autobatch.per_level(
            lambda level: autobatch.largest_near(lambda b: fits(level, b), cap, guess=1), cap
        )

    assert per_level(16) == {"none": 3, "selective": 9, "blocks": 16}
    assert per_level(8) == {"none": 3, "selective": 8}
    assert "blocks" in tried


def test_probe_configs_read_no_weights_and_keep_what_sets_the_memory():
    cfg = tiny_config(
        **{"model.num_parts": 5, "precision": "bfloat16", "data.accumulate": 2, "report": True}
    ).replace({"features.kind": "vgg19", "features.weights": "some/file.pth"})
    probe = autobatch.probe_config(cfg, 48, 3, "blocks")
    assert probe.data.image_size == 48 and probe.data.batch_size == 3
    assert probe.model.activation_checkpointing == "blocks"
    assert probe.features.kind == "random_vgg19" and probe.features.weights is None
    assert probe.model.pretrained is None and probe.report is False
    assert probe.model.num_parts == 5 and probe.precision == "bfloat16"
    assert probe.data.accumulate == 2


#: The budget of the tests that run the real CPU probe: the probe children's address space is
#: capped at it, far above the tiny network's probe steps (nothing refused).
TINY_BUDGET_GB = 1.25


@pytest.fixture(scope="module")
def tiny_probed():
    """The CPU memory model of the tiny config from the real probe children (four levels,
    a child each: half a minute of CPU, so made once), and the progress ticks it gave."""
    probed = []
    model = autobatch.cpu_model(tiny_config(), TINY_BUDGET_GB * 2**30, progress=probed.append)
    return model, probed


def test_the_cpu_model_comes_from_a_probe_child_and_the_choice_fits_it(monkeypatch, tiny_probed):
    cfg = tiny_config()
    model, probed = tiny_probed
    assert set(model) == set(autobatch.LEVELS)
    assert probed == list(autobatch.LEVELS)  # the progress bar's ticks, one per level
    for intercept, per_image in model.values():
        # The child's whole resident set (interpreter, torch) is in the intercept.
        assert intercept > 50 * 2**20 and per_image >= 0
    monkeypatch.setattr(autobatch, "cpu_model", lambda cfg, budget, **_: model)
    budget_gb = 3.0
    chosen, choice = autobatch.resolve(cfg, "cpu", budget_gb, max_batch=10_000)
    a, b = model[choice.activation_checkpointing]
    assert a + b * choice.batch_size <= autobatch.SAFETY * budget_gb * 2**30
    assert chosen.data.batch_size == choice.batch_size
    assert chosen.model.activation_checkpointing == choice.activation_checkpointing
    assert "CPU memory model" in choice.line(cfg.data.image_size)


def test_a_refused_probe_bounds_its_level_and_the_others_come_from_their_fits(monkeypatch):
    jobs = []

    def fake_run(cmd, **kwargs):
        job = json.loads(cmd[-1])
        jobs.append(job)
        gib = 2**30
        rows = {
            # 1 GiB + 2 GiB per image: 3 images under 0.9 x 8 GiB.
            "none": [{"batch": 1, "peak": 3 * gib}, {"batch": 2, "peak": 5 * gib}],
            # 1 GiB + 0.5 GiB per image: 12 images.
            "selective": [{"batch": 1, "peak": 1.5 * gib}, {"batch": 2, "peak": 2 * gib}],
            # Its second probe batch refused under the cap: 1 image at most.
            "blocks": [{"batch": 1, "peak": 7 * gib}, {"batch": 2, "refused": True}],
            # 1 GiB + 1 GiB per image: 6 images.
            "stages": [{"batch": 1, "peak": 2 * gib}, {"batch": 2, "peak": 3 * gib}],
        }[job["level"]]
        out = "\n".join(json.dumps(r) for r in rows)
        return type("Done", (), {"returncode": 0, "stdout": out, "stderr": ""})()

    monkeypatch.setattr(autobatch.subprocess, "run", fake_run)
    cfg = tiny_config(**{"data.image_size": 96})
    chosen, choice = autobatch.resolve(cfg, "cpu", budget_gb=8.0, max_batch=64)
    assert choice.per_level == {"none": 3, "selective": 12, "blocks": 1, "stages": 6}
    assert (choice.batch_size, choice.activation_checkpointing) == (12, "selective")
    # Each level probed at the run's own size, its child capped at the budget.
    assert [j["level"] for j in jobs] == list(autobatch.LEVELS)
    assert {j["size"] for j in jobs} == {96}
    assert {j["budget"] for j in jobs} == {8.0 * 2**30}
    assert "of 96 px" in choice.line(96)


def test_above_the_largest_probe_size_the_per_image_memory_is_scaled(monkeypatch):
    sizes = []

    def fake_run(cmd, **kwargs):
        job = json.loads(cmd[-1])
        sizes.append(job["size"])
        rows = [{"batch": 1, "peak": 1000 + 10}, {"batch": 2, "peak": 1000 + 20}]
        if job["level"] == "blocks":
            rows[1] = {"batch": 2, "refused": True}
        out = "\n".join(json.dumps(r) for r in rows)
        return type("Done", (), {"returncode": 0, "stdout": out, "stderr": ""})()

    monkeypatch.setattr(autobatch.subprocess, "run", fake_run)
    size = 2 * autobatch.PROBE_MAX_SIZE
    model = autobatch.cpu_model(tiny_config(**{"data.image_size": size}), budget=1e9)
    assert set(sizes) == {autobatch.PROBE_MAX_SIZE}
    assert model["none"] == pytest.approx((1000.0, 40.0))
    # Refused at the probe's smaller size: nothing is known to fit at the run's.
    assert model["blocks"] == 0


def test_budget_errors_name_the_field():
    with pytest.raises(ConfigError, match="memory_budget_gb: expected a positive number"):
        autobatch.resolve(tiny_config(), "cpu", budget_gb=0.0)
    with pytest.raises(ConfigError, match="memory_budget_gb: expected at least"):
        tiny_config(memory_budget_gb=0.0)


def test_scops_train_batch_size_auto_prints_the_choice_and_trains_with_it(
    tmp_path, capsys, monkeypatch
):
    # The data set (8 images) caps the batch; a generous budget reaches it without
    # checkpointing. The model is faked here (its real probe is tested above).
    monkeypatch.setattr(
        autobatch,
        "cpu_model",
        lambda cfg, budget, **_: {level: (1e8, 1e6) for level in autobatch.LEVELS},
    )
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(memory_budget_gb=4.0).to_dict()))
    out = tmp_path / "out"
    argv = ["--config", str(config), "--steps", "1", "--out", str(out), "--no-progress"]
    assert main(argv + ["--batch-size", "auto"]) == 0
    err = capsys.readouterr().err
    chose = err.index("batch size auto: 8 images of 32x32 with activation checkpointing 'none'")
    # Before the probe's minutes of silence, what it does.
    assert (
        0
        <= err.index(
            "scops-train: batch size auto: measuring the memory of a training step at 32 px for "
            "each activation checkpointing level (none, selective, blocks, stages): probe steps "
            "at 32 px in child processes"
        )
        < chose
    )
    saved = load_checkpoint(out)["config"]
    assert saved["data"]["batch_size"] == 8
    assert saved["model"]["activation_checkpointing"] == "none"
    assert main(argv + ["--overwrite", "--batch-size", "three"]) == 2
    assert "--batch-size: expected a positive integer or 'auto', got 'three'" in (
        capsys.readouterr().err
    )


def test_the_batch_chosen_on_cpu_runs_under_the_budget(monkeypatch, tiny_probed):
    """The whole CPU path: probes (`tiny_probed`), model, choice, then the chosen step
    itself in a fresh child, capped at the budget, whose resident peak must stay under it."""
    import subprocess
    import sys

    cfg = tiny_config()
    budget_gb = TINY_BUDGET_GB
    seen = []

    def probed(cfg_, budget, **kwargs):
        seen.append(budget)
        return tiny_probed[0]

    monkeypatch.setattr(autobatch, "cpu_model", probed)
    chosen, choice = autobatch.resolve(cfg, "cpu", budget_gb, max_batch=100_000)
    assert seen == [budget_gb * 2**30]  # the budget the fixture's probes ran under
    assert choice.batch_size > 8  # the budget holds far more than the tiny data set
    job = {
        "config": cfg.to_dict(),
        "level": choice.activation_checkpointing,
        "batches": [choice.batch_size],
        "size": cfg.data.image_size,
        "budget": budget_gb * 2**30,
    }
    done = subprocess.run(
        [sys.executable, "-m", "scops_fast.train.autobatch", json.dumps(job)],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert "peak" in row, row  # not refused under the budget's cap
    assert row["peak"] <= budget_gb * 2**30, (row["peak"] / 2**30, choice.line(32))


def _auto_rank(rank, port, argv, out_dir, mode):
    """A torchrun-like rank running scops-train --batch-size auto. mode "faked": the probe
    faked; "real": the real CPU probe; "slow": the default group's timeout set to 3 s, and
    rank 0's probe takes 6 s, running a real step in its own process (as on CUDA)."""
    import datetime
    import os
    import time

    import torch.distributed as dist
    from train_helpers import join_local_group

    join_local_group(rank, port, 2)
    os.environ["LOCAL_WORLD_SIZE"] = "2"
    calls = []
    real_resolve = autobatch.resolve

    def fake_resolve(cfg, device, budget_gb, max_batch, progress=None):
        calls.append({"device": device, "budget_gb": budget_gb, "max_batch": max_batch})
        if mode == "real":
            return real_resolve(cfg, device, budget_gb, max_batch, progress)
        if mode == "slow":
            # A DistributedDataParallel here would wait for rank 1, which is in the exchange.
            autobatch.probe_step(autobatch.probe_config(cfg, 32, 2, "blocks"))
            time.sleep(6.0)
        choice = autobatch.Choice(3, "stages", {"none": 1, "stages": 3}, "faked", budget_gb)
        return cfg, choice

    autobatch.resolve = fake_resolve
    if mode == "slow":
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=3))
    code = main(argv)
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"code": code, "calls": calls}, f)


def _run_auto_ranks(tmp_path, mode):
    from train_helpers import free_port, spawn_ranks

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(**{"data.args": {"n": 12}}).to_dict()))
    out = tmp_path / "run"
    argv = ["--config", str(config), "--out", str(out), "--steps", "1", "--no-progress"]
    argv += ["--batch-size", "auto", "--set", "memory_budget_gb=3"]
    spawn_ranks(_auto_rank, (free_port(), argv, str(tmp_path), mode), nprocs=2, timeout=240)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0]
    assert ranks[0]["calls"] == [{"device": "cpu", "budget_gb": 1.5, "max_batch": 6}]
    assert ranks[1]["calls"] == []
    return load_checkpoint(out)["config"]


def test_under_torchrun_rank_0_chooses_for_its_share_and_every_rank_takes_it(tmp_path):
    """Two gloo ranks: only rank 0 probes, for half the budget (two processes share the
    machine) and half the data set; both train with 3 images each, global batch 6, and the
    level rank 0 chose."""
    saved = _run_auto_ranks(tmp_path, "faked")
    assert saved["data"]["batch_size"] == 6
    assert saved["model"]["activation_checkpointing"] == "stages"


def test_under_torchrun_the_real_cpu_probe_runs_outside_the_process_group(tmp_path):
    """The probe's children inherit torchrun's environment; they must not join (or host)
    the group. 1.5 GiB fits the data set's share, 6 images a process, without checkpointing."""
    saved = _run_auto_ranks(tmp_path, "real")
    assert saved["data"]["batch_size"] == 12
    assert saved["model"]["activation_checkpointing"] == "none"


def test_under_torchrun_the_ranks_wait_for_a_probe_longer_than_the_groups_timeout(tmp_path):
    """Rank 0's in-process probe step (the CUDA path's) builds no DistributedDataParallel,
    and rank 1 waits past the default group's 3 s timeout for the answer."""
    saved = _run_auto_ranks(tmp_path, "slow")
    assert saved["data"]["batch_size"] == 6


def test_choose_cuda_on_a_simulated_gpu(monkeypatch):
    """choose_cuda's trials against a simulated 8.5 GiB GPU: a step's peak is a + b * batch
    per level; above the budget (the allocator is held to it) a step fails as CUDA fails
    (OutOfMemoryError, or a library's RuntimeError). A failed step's garbage (held in a
    reference cycle) is collected before the next trial's empty_cache; an unrelated error
    is raised, not counted as out of memory."""
    import gc

    from train_helpers import SimulatedGpu

    per_image = {"none": 1.0, "selective": 0.7, "blocks": 0.4, "stages": 0.3}
    gpu = SimulatedGpu(per_image, device_gib=8.5).install(monkeypatch)
    ticks = []
    gc.disable()  # only choose_cuda's own collection may free the garbage
    try:
        chosen, choice = autobatch.resolve(tiny_config(), "cuda", 8.0, 64, ticks.append)
    finally:
        gc.enable()
    assert ticks == [f"{level}, batch {b}" for level, b in gpu.steps]
    # Under 8 GiB: none 7, selective 10, blocks 17, stages 23 images (the device's 8.5 GiB
    # would take 7, 10, 18 and 25).
    assert choice.per_level == {"none": 7, "selective": 10, "blocks": 17, "stages": 23}
    assert (chosen.data.batch_size, chosen.model.activation_checkpointing) == (23, "stages")
    # One before the search (the allocator's cache emptied before the cap), one per trial.
    assert gpu.garbage and gpu.empties == 1 + len(gpu.steps)
    assert len(gpu.steps) <= 4 * 6  # fit, then confirm (bisection where rounding)
    refused = sum(gpu.step_gib(level, b) > 8.0 for level, b in gpu.steps)
    assert f"CUDA trials: {len(gpu.steps)} steps at 32 px" in choice.line(32)
    assert f"{refused} over the budget or out of memory" in choice.line(32)

    def broken(cfg, before=None, steps=1):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(autobatch, "probe_step", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        autobatch.resolve(tiny_config(), "cuda", budget_gb=8.0, max_batch=64)


def test_the_cuda_trials_hold_the_allocator_to_the_budget(monkeypatch):
    """The allocator reserves 10 % more than the tensors' peak (fragmentation) on an 80 GiB
    GPU: under 8 GiB a batch fits when what the allocator reserves does, not the tensors
    alone (which would take 7, 10, 17 and 23 images, each reserving more than 8 GiB). The
    process's memory fraction is given back after the search, and after a failed one."""
    from train_helpers import SimulatedGpu

    per_image = {"none": 1.0, "selective": 0.7, "blocks": 0.4, "stages": 0.3}
    gpu = SimulatedGpu(per_image, device_gib=80.0, reserved_factor=1.1).install(monkeypatch)
    _, choice = autobatch.resolve(tiny_config(), "cuda", 8.0, 64)
    assert choice.per_level == {"none": 6, "selective": 8, "blocks": 15, "stages": 20}
    assert gpu.fractions == [pytest.approx(0.1), 1.0] and gpu.fraction == 1.0

    def broken(cfg, before=None, steps=1):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(autobatch, "probe_step", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        autobatch.resolve(tiny_config(), "cuda", 8.0, 64)
    assert gpu.fraction == 1.0
    # A budget above the GPU holds the allocator to the whole GPU (torch refuses a
    # fraction above 1).
    monkeypatch.setattr(autobatch, "probe_step", gpu.probe_step)
    autobatch.resolve(tiny_config(), "cuda", 120.0, 4)
    assert gpu.fractions[-2:] == [1.0, 1.0]


def test_the_default_cuda_budget_leaves_the_context_and_a_margin(monkeypatch):
    """The default CUDA budget is CUDA_DEFAULT_SHARE of what this process can have: the
    free memory (the CUDA context is not free) and what its allocator holds already."""
    from train_helpers import SimulatedGpu

    gpu = SimulatedGpu({}, device_gib=80.0, context_gib=0.5).install(monkeypatch)
    assert autobatch.default_budget_gb("cuda") == pytest.approx(0.95 * 79.5)
    gpu.held_gib = 2.0
    assert autobatch.default_budget_gb("cuda") == pytest.approx(0.95 * 79.5)


def test_the_probe_measures_a_step_with_the_optimisers_state_resident(monkeypatch):
    """A first step allocates SGD's momentum at its end, after its peak; every later one
    holds it through forward and backward. The probe's measured step is such a step, and
    the peak's reset (`before`) comes after the set-up, just before it."""
    import torch

    from scops_fast.train.trainer import Trainer

    events = []
    real_step = Trainer.train_step

    def watched_step(self, batch, **replay):
        params = [
            p
            for opt in (self.net_optimizer, self.basis_optimizer)
            for group in opt.param_groups
            for p in group["params"]
        ]
        momentum = [
            self.net_optimizer.state.get(p, self.basis_optimizer.state.get(p, {})).get(
                "momentum_buffer"
            )
            for p in params
        ]
        events.append(
            (
                "step",
                all(torch.is_tensor(m) for m in momentum),
                all(p.grad is None for p in params),
            )
        )
        return real_step(self, batch, **replay)

    monkeypatch.setattr(Trainer, "train_step", watched_step)
    cfg = autobatch.probe_config(tiny_config(), 32, 2, "none")
    autobatch.probe_step(cfg, before=lambda: events.append(("before",)))
    assert events == [("before",), ("step", True, True)]
