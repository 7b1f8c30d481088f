"""The trainer on a tiny network and data set: repeatability, exact resume,
checkpoint contents, the data order, augmentation, the loading API."""

import json
import os

import pytest
import torch
from train_fakes import TinyParts
from train_helpers import assert_bitwise_equal, state_tensors, tiny_config

from scops_fast import losses
from scops_fast.train import Trainer, load_model, predict_parts
from scops_fast.train.augment import GlobalBatchColorJitter
from scops_fast.train.checkpoint import load_checkpoint, save_atomic
from scops_fast.train.config import JitterConfig
from scops_fast.train.data import GlobalBatchOrder
from scops_fast.train.loading import upsample_logits
from scops_fast.train.progress import read_metrics
from scops_fast.train.trainer import poly_lr


def make(tmp_path, name="run", resume=False, **overrides):
    return Trainer(
        tiny_config(**overrides), tmp_path / name, resume=resume, progress=False, tensorboard=False
    )


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c", seed=1)
    for t in (a, b, c):
        t.train(until=3)
    assert_bitwise_equal(state_tensors(a), state_tensors(b))
    assert not torch.equal(a.objective.basis, c.objective.basis)


def test_resume_is_bitwise_identical(tmp_path):
    straight = make(tmp_path, "straight")
    straight.train()
    assert straight.step == 6

    first = make(tmp_path, "split")
    first.train(until=3)
    assert load_checkpoint(tmp_path / "split")["step"] == 3
    del first
    second = make(tmp_path, "split", resume=True)
    assert second.step == 3
    second.train()
    assert second.step == 6
    assert_bitwise_equal(state_tensors(straight), state_tensors(second))
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [2, 3, 4, 6]


def test_checkpoint_contents_and_atomic_write(tmp_path):
    trainer = make(tmp_path)
    trainer.train(until=2)
    files = sorted(os.listdir(tmp_path / "run"))
    assert "checkpoint.pt" in files and "checkpoint.pt.tmp" not in files
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert {"model", "basis", "optimizer", "step", "config", "rng"} <= set(ckpt)
    assert set(ckpt["optimizer"]) == {"net", "basis"}
    assert {"torch", "warp", "jitter", "data_order"} <= set(ckpt["rng"])
    assert ckpt["step"] == 2 and ckpt["basis"].shape == (3, 11)
    assert ckpt["config"]["model"]["num_parts"] == 3
    assert ckpt["rng"]["data_order"]["batch_in_epoch"] == 2


def test_a_cpu_run_on_a_machine_with_gpus_touches_no_gpu_generator(tmp_path, monkeypatch):
    """torch.cuda.get_rng_state_all would start a CUDA context on every visible GPU (the
    other ranks' too) for a run that uses none."""

    def no(*args, **kwargs):
        raise AssertionError("a CPU run read or set a CUDA generator")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, no)
    make(tmp_path, device="cpu").train(until=2)
    assert load_checkpoint(tmp_path / "run")["rng"]["cuda"] is None
    make(tmp_path, device="cpu", resume=True).train(until=3)


def test_the_cuda_generator_state_to_restore():
    from scops_fast.train.trainer import cuda_rng_state_for

    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(2)]
    cuda0, cuda1, cuda5 = (torch.device("cuda", i) for i in (0, 1, 5))
    assert cuda_rng_state_for(states[1], torch.device("cpu")) is None
    assert cuda_rng_state_for(None, cuda0) is None
    assert cuda_rng_state_for(states[1], cuda0) is states[1]  # this device's, as saved now
    # Checkpoints before 2026-12-08: one per GPU the saving process saw.
    assert cuda_rng_state_for(states, cuda1) is states[1]
    assert cuda_rng_state_for(states, torch.device("cuda")) is states[0]
    assert cuda_rng_state_for(states, cuda5) is None  # saved on fewer GPUs


def test_save_atomic_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}


def test_metrics_history(tmp_path):
    make(tmp_path).train()
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4, 6]
    keys = {"loss", "concentration", "equivariance", "landmark_equivariance", "semantic"}
    assert keys | {"orthonormal", "lr"} <= set(records[0])
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_total_is_the_weighted_sum_and_losses_use_the_backend(tmp_path, monkeypatch):
    trainer = make(tmp_path, **{"loss.backend": "reference"})
    seen = []
    original = losses.concentration_loss

    def spy(pred, *, backend=None):
        seen.append(backend)
        return original(pred, backend=backend)

    monkeypatch.setattr(losses, "concentration_loss", spy)
    batch = {"img": torch.stack([trainer.dataset[i]["img"] for i in range(2)])}
    batch["saliency"] = torch.stack([trainer.dataset[i]["saliency"] for i in range(2)])
    total, terms = trainer.compute_losses(batch)
    weights = torch.tensor([10.0, 1e3, 1e2, 1e4, 0.1])
    torch.testing.assert_close(total, (weights * terms).sum())
    assert seen == ["reference"]


@pytest.mark.rounding
def test_lowres_and_full_semantic_forms_agree(tmp_path):
    # Two algorithms for one loss (low-resolution contraction in float64, the dense one in
    # float32): equal here, and one-ulp moves of the weights and images left both unchanged
    # (scripts/measure_rounding.py's nudge); 1e-4 is for other CPUs' summation orders.
    values = []
    for form in ("lowres", "full"):
        trainer = make(tmp_path, form, **{"loss.semantic_form": form})
        items = [trainer.dataset[i] for i in range(2)]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("img", "saliency")}
        values.append(trainer.compute_losses(batch)[1][3])
    torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-7)


def test_missing_saliency_is_explained(tmp_path):
    trainer = make(tmp_path)
    with pytest.raises(KeyError, match="features.saliency"):
        trainer.compute_losses({"img": torch.rand(2, 3, 32, 32)})


def test_global_batch_order():
    whole = GlobalBatchOrder(10, 4, seed=3)
    ranks = [GlobalBatchOrder(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(6):
        assert ranks[0].indices(step) + ranks[1].indices(step) == whole.indices(step)
    epoch0 = whole.indices(0) + whole.indices(1)
    assert len(set(epoch0)) == 8
    assert whole.indices(2) != whole.indices(0)  # a new permutation each epoch
    with pytest.raises(ValueError, match="does not split evenly"):
        GlobalBatchOrder(10, 3, seed=0, world_size=2)


def test_color_jitter_is_seeded_8bit_and_identity_when_off():
    images = torch.rand(4, 3, 8, 8)
    cfg = JitterConfig()

    def jitter(seed, c=cfg, local=slice(0, 4)):
        gen = torch.Generator().manual_seed(seed)
        return GlobalBatchColorJitter(c, 4, gen)(images[local], local)

    a, b = jitter(0), jitter(0)
    assert torch.equal(a, b) and not torch.equal(a, jitter(1))
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(torch.round(a * 255) / 255, a)
    off = JitterConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert torch.equal(jitter(0, off), torch.round(images * 255) / 255)
    # A rank's slice is the same images' jitter as in the whole batch.
    assert torch.equal(jitter(0, local=slice(2, 4)), jitter(0)[2:])


def test_load_model_and_predict_parts(tmp_path):
    trainer = make(tmp_path)
    trainer.train(until=2)
    model = load_model(tmp_path / "run" / "checkpoint.pt")
    assert not model.training
    images = torch.stack([TinyParts(4, size=32)[i]["img"] for i in range(3)])
    probs = predict_parts(model, images)
    assert probs.shape == (3, 4, 32, 32)
    torch.testing.assert_close(probs.sum(1), torch.ones(3, 32, 32))
    trainer.net.eval()
    with torch.no_grad():
        logits = trainer.net(trainer.net.normalize(images))
    expected = torch.softmax(upsample_logits(logits, (32, 32)), 1)
    torch.testing.assert_close(probs, expected)
    assert load_model(tmp_path / "run").num_parts == 3  # a run directory works too
    assert model.image_size == 32
    # Other sizes: the network sees the images at its training size, maps come back at theirs.
    big = torch.nn.functional.interpolate(images, size=(64, 48), mode="nearest")
    probs_big = predict_parts(model, big)
    assert probs_big.shape == (3, 4, 64, 48)
    torch.testing.assert_close(probs_big.sum(1), torch.ones(3, 64, 48))
    small = torch.nn.functional.interpolate(probs_big, size=(32, 32), mode="area")
    assert (small.argmax(1) == probs.argmax(1)).float().mean() > 0.9
    native = predict_parts(model, big, size=big.shape[-2:])
    assert native.shape == probs_big.shape and not torch.allclose(native, probs_big)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        predict_parts(model, images[0])


def test_report_is_written_at_the_end(tmp_path):
    make(tmp_path, report=True, steps=2).train()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "parts.png" in html and "curves.png" in html
    assert (tmp_path / "run" / "parts.png").stat().st_size > 0


def test_evaluation_at_the_end(tmp_path):
    overrides = {
        "steps": 2,
        "report": True,
        "evaluation.enabled": True,
        "evaluation.train_dataset": "train_fakes:TinyParts",
        "evaluation.train_args": {"n": 6, "seed": 1},
        "evaluation.test_dataset": "train_fakes:TinyParts",
        "evaluation.test_args": {"n": 4, "seed": 2},
    }
    trainer = make(tmp_path, **overrides)
    trainer.train()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(trainer.metrics))
    model = saved["model"]
    assert model["n_train"] == 6 and model["n_test"] == 4
    assert "landmark_error_test" in model and "part_nmi" in model
    assert set(saved["baselines"]) == {"one_part", "kmeans"}
    assert saved["baselines"]["kmeans"]["fg_iou"] == 1.0
    crit = saved["criteria"]
    assert crit["landmark_ok"] == (crit["landmark_error_ratio_vs_kmeans"] <= 0.8)
    assert crit["nmi_ok"] == (crit["part_nmi_margin_vs_kmeans"] >= 0.1)
    assert saved["training"]["steps"] == 2 and saved["training"]["wall_time_s"] > 0
    assert set(saved["training"]["final_losses"]) >= {"loss", "semantic"}
    html = (tmp_path / "run" / "report.html").read_text()
    assert "dense foreground part NMI" in html and "k-means" in html and "stand-in" in html
    assert "Criteria against the k-means baseline" in html


def test_metrics_json_without_evaluation_and_after_resume(tmp_path):
    trainer = make(tmp_path, report=True, steps=2)
    trainer.train()
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "model" not in first and first["training"]["steps"] == 2
    assert load_checkpoint(tmp_path / "run")["train_seconds"] > 0
    # Resuming a finished run only rewrites the outputs, with the same training time.
    again = make(tmp_path, resume=True, report=True, steps=2)
    again.train()
    second = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert second["training"]["wall_time_s"] == first["training"]["wall_time_s"]
    assert second["training"]["final_losses"] == first["training"]["final_losses"]


def test_cached_items_train_identically(tmp_path):
    a, b = make(tmp_path, "a"), make(tmp_path, "b", **{"data.cache": True})
    for t in (a, b):
        t.train(until=5)  # more than one epoch of the 8 items
    assert_bitwise_equal(state_tensors(a), state_tensors(b))
    assert len(b.dataset._items) == 8


def test_progress_bar_and_tensorboard_when_installed(tmp_path, monkeypatch):
    import sys
    import types

    calls = {"update": 0, "scalars": []}

    class FakeBar:
        def __init__(self, total, initial, **kwargs):
            calls["bar"] = (total, initial)

        def update(self, n):
            calls["update"] += n

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass

    class FakeWriter:
        def __init__(self, log_dir):
            calls["log_dir"] = log_dir

        def add_scalar(self, tag, value, step):
            calls["scalars"].append((tag, step))

        def close(self):
            pass

    from scops_fast import terminal

    monkeypatch.setattr(terminal, "is_terminal", lambda stream: True)
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    trainer = Trainer(tiny_config(steps=4), tmp_path / "run", progress=True, tensorboard=True)
    trainer.train()
    assert calls["bar"] == (4, 0) and calls["update"] == 4
    assert calls["log_dir"].endswith("tensorboard")
    assert ("train/loss", 2) in calls["scalars"] and ("train/semantic", 4) in calls["scalars"]


def test_missing_tensorboard_warns_once(tmp_path, monkeypatch):
    import sys

    from scops_fast.train import progress

    monkeypatch.setattr(progress, "_warned_no_tensorboard", False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.warns(UserWarning, match="tensorboard is not installed") as record:
        for name in ("a", "b"):
            Trainer(tiny_config(steps=1), tmp_path / name, progress=False).train()
    assert len([w for w in record if "tensorboard" in str(w.message)]) == 1


def test_resume_keeps_the_checkpoint_config_and_says_what_it_ignores(tmp_path):
    make(tmp_path).train(until=3)
    resumed = make(tmp_path, resume=True, steps=8, **{"optim.lr": 0.5})
    assert resumed.cfg.optim.lr == 0.01 and resumed.cfg.steps == 8 and resumed.step == 3
    assert make(tmp_path).resume_note is None  # a fresh start says nothing
    o = resumed.cfg.optim
    lr_6, lr_8 = (poly_lr(o.lr, 3, total, o.poly_power) for total in (6, 8))
    assert resumed.resume_note == (
        "resuming at step 3 with the checkpoint's settings; ignored (the checkpoint's kept): "
        f"optim.lr; changed: steps 6 -> 8 (the learning rate follows the 8-step schedule from "
        f"here: {lr_6:.4g} -> {lr_8:.4g} at step 3)"
    )


def test_a_longer_resumed_run_follows_the_new_horizons_schedule(tmp_path):
    """--resume --steps N: from the checkpoint's step on, the learning rate is a N-step run's
    (chosen: the old horizon would leave 0, a restart is another experiment)."""
    make(tmp_path).train(until=3)
    resumed = make(tmp_path, resume=True, steps=10)
    resumed.train(until=4)
    o = resumed.cfg.optim
    group = resumed.net_optimizer.param_groups[0]
    expected = poly_lr(o.lr, 3, 10, o.poly_power) * group["lr_mult"]
    assert group["lr"] == pytest.approx(expected, rel=1e-12)
    assert expected > poly_lr(o.lr, 3, 6, o.poly_power) * group["lr_mult"]  # it did change
