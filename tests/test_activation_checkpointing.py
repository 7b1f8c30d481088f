"""Activation checkpointing (`model.activation_checkpointing`: none, blocks, selective).

Noise model: none. Checkpointing recomputes the same ops on the same inputs, in the same
order, and the backward runs the original graph with the recomputed tensors in place of
the kept ones, so a step is the plain step bit for bit: losses, every gradient, the
weights and momenta after the SGD step, and BatchNorm's running statistics and batch
count (updated once per forward, not again by the recomputation). One intra-op thread,
so that no reduction's split can differ between the two runs.
"""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import (
    assert_bitwise_equal,
    free_port,
    join_local_group,
    spawn_ranks,
    state_tensors,
    tiny_config,
)

from scops_fast._dispatch import unavailable_reason
from scops_fast.models import checkpointing
from scops_fast.train import Trainer, build_network, distributed
from scops_fast.train.config import ConfigError, config_from_dict, load_config
from scops_fast.train.data import batches

MODES = ("blocks", "stages", "selective")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(cfg, out_dir, **kwargs):
    return Trainer(cfg, out_dir, progress=False, tensorboard=False, **kwargs)


def _first_batch(trainer):
    return next(iter(batches(trainer.dataset, trainer.order, 0, 1)))


def _one_step(cfg, out_dir) -> dict:
    """Everything one training step produces: logged losses, gradients (as clipped),
    weights, basis, momenta and BatchNorm buffers."""
    trainer = _trainer(cfg, out_dir)
    trainer.module.train()
    out = {"losses": trainer.train_step(_first_batch(trainer))}
    for name, p in trainer.objective.named_parameters():
        if p.grad is not None:
            out[f"grad.{name}"] = p.grad
    out.update(state_tensors(trainer))
    return out


def _batchnorm_buffers(state: dict) -> list[str]:
    return [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]


def _backend(name):
    reason = unavailable_reason(name, None, "cpu")
    if reason is not None:
        pytest.skip(f"loss backend {name!r} unavailable: {reason}")
    return name


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_a_step_of_the_small_network_is_the_plain_step(tmp_path, backend):
    overrides = {"loss.backend": _backend(backend)}
    plain = _one_step(tiny_config(**overrides), tmp_path / "none")
    assert any(k.startswith("grad.net.backbone") for k in plain)
    buffers = _batchnorm_buffers(plain)
    assert buffers and all(
        int(plain[k]) == 2 for k in buffers if k.endswith("num_batches_tracked")
    )  # two forwards per step: images and warped images
    for mode in MODES:
        cfg = tiny_config(**overrides, **{"model.activation_checkpointing": mode})
        assert_bitwise_equal(_one_step(cfg, tmp_path / mode), plain)


def test_a_step_of_the_original_config_is_the_plain_step(tmp_path):
    """celeba-k8-original (ResNet-50, caffe block stride, trained shortcut BatchNorms, the
    original's quirks), with random weights and tiny images."""
    overrides = {
        "device": "cpu",
        "report": False,
        "model.pretrained": None,
        "data.dataset": "train_fakes:TinyParts",
        "data.args": {"n": 4},
        "data.image_size": 64,
        "data.batch_size": 2,
        "features.kind": "lowlevel",
        "features.weights": None,
        "features.stride": 4,
    }
    plain = _one_step(load_config("celeba-k8-original", overrides), tmp_path / "none")
    assert any("downsample.1.weight" in k for k in plain if k.startswith("grad."))
    for mode in MODES:
        cfg = load_config(
            "celeba-k8-original", {**overrides, "model.activation_checkpointing": mode}
        )
        assert_bitwise_equal(_one_step(cfg, tmp_path / mode), plain)


class _CountOps(TorchDispatchMode):
    """How many convolutions and BatchNorm forwards run (not served from a cache)."""

    def __init__(self):
        super().__init__()
        self.convolutions = self.batchnorms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        self.convolutions += name.startswith("convolution.")
        self.batchnorms += "batch_norm" in name and "backward" not in name
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["small", "deeplab_resnet50"])
def test_the_backward_recomputes_what_each_mode_says(arch):
    """blocks recomputes convolutions and BatchNorms; selective only the BatchNorms, its
    convolutions' outputs kept; none recomputes nothing."""
    cfg = tiny_config(**{"model.arch": arch}).model
    counts = {}
    for mode in ("none", *MODES):
        torch.manual_seed(0)
        net = build_network(dataclasses.replace(cfg, activation_checkpointing=mode))
        logits = net.train()(torch.rand(2, 3, 32, 32))
        with _CountOps() as ops:
            logits.square().sum().backward()
        counts[mode] = (ops.convolutions, ops.batchnorms)
    assert counts["none"] == (0, 0)
    conv, bn = counts["blocks"]
    assert conv > 0 and bn > 0
    assert counts["stages"] == counts["blocks"]  # the same recomputation, coarser regions
    assert counts["selective"] == (0, bn)


@pytest.mark.parametrize(
    ("mode", "regions"),
    [
        ("blocks", 7),
        ("stages", 2),
        ("selective", 2),
    ],  # six blocks and the classifier; the trunk and it
)
def test_evaluation_and_no_grad_run_the_plain_forward(monkeypatch, mode, regions):
    calls = []
    real = checkpointing.checkpoint
    monkeypatch.setattr(
        checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    net = build_network(tiny_config(**{"model.activation_checkpointing": mode}).model)
    images = torch.rand(2, 3, 32, 32)
    net.eval()(images)
    with torch.no_grad():
        net.train()(images)
    assert calls == []
    net.train()(images)
    assert len(calls) == regions


def test_the_field_is_validated_and_reaches_the_network():
    assert tiny_config().model.activation_checkpointing == "none"
    with pytest.raises(ConfigError, match="model.activation_checkpointing: expected one of"):
        tiny_config(**{"model.activation_checkpointing": "all"})
    net = build_network(tiny_config(**{"model.activation_checkpointing": "selective"}).model)
    assert net.activation_checkpointing == "selective"
    assert net.backbone.activation_checkpointing == net.head.activation_checkpointing
    net.activation_checkpointing = "none"
    assert net.backbone.activation_checkpointing == "none"
    with pytest.raises(ValueError, match="activation_checkpointing"):
        net.activation_checkpointing = "everything"


def test_a_checkpointed_resumed_run_is_the_uninterrupted_plain_run(tmp_path):
    """Started with blocks, resumed with selective (the setting comes from the resuming
    config, as the loss backend): the weights of an uninterrupted plain run, bit for bit."""
    straight = _trainer(tiny_config(steps=4), tmp_path / "straight")
    straight.train()
    started = tiny_config(steps=4, **{"model.activation_checkpointing": "blocks"})
    _trainer(started, tmp_path / "run").train(until=2)
    resumed_cfg = tiny_config(steps=4, **{"model.activation_checkpointing": "selective"})
    resumed = _trainer(resumed_cfg, tmp_path / "run", resume=True)
    assert resumed.step == 2 and resumed.net.activation_checkpointing == "selective"
    resumed.train()
    assert_bitwise_equal(state_tensors(resumed), state_tensors(straight))


# --------------------------------------------------------------------------- DDP
def _ddp_worker(rank, port, configs, out_dir, result_path):
    join_local_group(rank, port, 2)
    states = []
    for i, config in enumerate(configs):
        trainer = _trainer(config_from_dict(config), f"{out_dir}/{i}")
        assert trainer.proc.world_size == 2
        trainer.module.train()
        for batch in batches(trainer.dataset, trainer.order, 0, trainer.cfg.steps):
            trainer.train_step(batch)
        states.append(state_tensors(trainer))
    if rank == 0:
        torch.save(states, result_path)
    distributed.teardown()


def test_ddp_with_checkpointing_is_plain_ddp(tmp_path):
    """Two gloo ranks, BatchNorm on batch statistics (DDP broadcasts rank 0's buffers
    before each forward): two steps with selective checkpointing give the plain run's
    weights and buffers on rank 0, bit for bit."""
    configs = [
        tiny_config(steps=2, **{"data.batch_size": 4, "model.activation_checkpointing": m})
        for m in ("none", "selective")
    ]
    result = tmp_path / "ddp.pt"
    spawn_ranks(
        _ddp_worker,
        (free_port(), [c.to_dict() for c in configs], str(tmp_path), str(result)),
        nprocs=2,
    )
    plain, checkpointed = torch.load(result)
    assert int(plain["model.backbone.layers.0.1.num_batches_tracked"]) == 4
    assert_bitwise_equal(checkpointed, plain)
